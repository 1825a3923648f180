"""Complete the look: recommendations for an uploaded scene, one category or many."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Response

from service.answers import all_categories, one_category
from service.deps import DEFAULT_K, check_categories, check_query, pipeline, unique
from service.params import CATEGORIES, ERRORS, EXPLAIN, FilterField, ImageField, KField
from service.recommender import Pipeline
from service.schemas import CompleteTheLook, CompleteTheLookAll

router = APIRouter(tags=["recommend"])


@router.post(
    "/complete-the-look",
    response_model=CompleteTheLook,
    responses=ERRORS,
)
async def complete_the_look(
    pipe: Annotated[Pipeline, pipeline("image", "category", "k", "explain", "filter")],
    image: ImageField,
    category: Annotated[str, Form(description="a category name", examples=["Shoes"])],
    k: KField = DEFAULT_K,
    explain: Annotated[bool, Form(description=EXPLAIN)] = False,
    filter: FilterField = None,
) -> Response:
    """Products of ``category`` that complete the look of the uploaded scene, best first
    (k of them whenever k pass the filter).

    For several questions about one photo, upload it once (``POST /scenes``) and ask with GET.
    """
    flt = check_query(k, filter, pipe.settings)
    wanted = check_categories(pipe.serving, [category])
    async with pipe.upload(image) as upload:
        found = await pipe.recommend(
            upload.sha256, wanted, k, upload, need_embedding=explain, flt=flt
        )
    return one_category(pipe, upload.sha256, category, wanted[category], k, found, explain)


@router.post(
    "/complete-the-look/all",
    response_model=CompleteTheLookAll,
    responses=ERRORS,
)
async def complete_the_look_all(
    pipe: Annotated[Pipeline, pipeline("image", "k", "filter")],
    image: ImageField,
    categories: Annotated[
        list[str] | None,
        Form(description=CATEGORIES, examples=[["Shoes", "Handbags, Wallets & Cases"]]),
    ] = None,
    k: KField = DEFAULT_K,
    filter: FilterField = None,
) -> Response:
    """Recommendations for every category (or the listed ones) from one encoder pass."""
    flt = check_query(k, filter, pipe.settings)
    wanted = check_categories(pipe.serving, unique(categories))
    async with pipe.upload(image) as upload:
        found = await pipe.recommend(upload.sha256, wanted, k, upload, flt=flt)
    return all_categories(pipe, upload.sha256, k, found)
