"""Complete the look: recommendations for an uploaded scene, one category or many."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile

from service.deps import DEFAULT_K, check_categories, check_k, parse_filter, pipeline, unique
from service.errors import UPLOAD, responses
from service.recommender import Pipeline, Recommendations, attention_grid
from service.schemas import CompleteTheLook, CompleteTheLookAll

router = APIRouter(tags=["recommend"])
EXPLAIN = "add the category's attention over the scene's regions"
CATEGORIES = "categories to recommend (repeat the field); all when absent"

ImageField = Annotated[
    UploadFile,
    File(
        description="the scene photo (JPEG, PNG or WebP), not empty",
        json_schema_extra={"minLength": 1},
    ),
]
# The schema's maximum is the default max_k; the app's schema says the configured one.
KField = Annotated[
    int,
    Form(
        description="how many products per category (1..max_k)",
        json_schema_extra={"minimum": 1, "maximum": 100},
    ),
]
KQuery = Annotated[
    int,
    Query(
        description="how many products per category (1..max_k)",
        json_schema_extra={"minimum": 1, "maximum": 100},
    ),
]
FILTER = (
    "JSON object: which products may be recommended. Keys: in_stock_only (default true), "
    "exclude (product ids), brand (a value or a list), attributes (key -> a value or a list), "
    "price_min, price_max. Absent: in-stock products only"
)
FILTER_EXAMPLE = '{"brand": ["acme", "zeta"], "price_max": 100, "exclude": ["sku-1"]}'
FilterField = Annotated[str | None, Form(description=FILTER, examples=[FILTER_EXAMPLE])]
FilterQuery = Annotated[str | None, Query(description=FILTER, examples=[FILTER_EXAMPLE])]
ERRORS = responses(UPLOAD)


@router.post(
    "/complete-the-look",
    response_model=CompleteTheLook,
    responses=ERRORS,
)
async def complete_the_look(
    request: Request,
    image: ImageField,
    category: Annotated[str, Form(description="a category name", examples=["Shoes"])],
    k: KField = DEFAULT_K,
    explain: Annotated[bool, Form(description=EXPLAIN)] = False,
    filter: FilterField = None,
) -> dict:
    """Products of ``category`` that complete the look of the uploaded scene, best first
    (k of them whenever k pass the filter).

    For several questions about one photo, upload it once (``POST /scenes``) and ask with GET.
    """
    pipe = await pipeline(request, "image", "category", "k", "explain", "filter")
    check_k(k, pipe.settings)
    flt = parse_filter(filter)
    wanted = check_categories(pipe.serving, [category])
    async with pipe.upload(image) as upload:
        found = await pipe.recommend(
            upload.sha256, wanted, k, upload, need_embedding=explain, flt=flt
        )
    return one_category(pipe, upload.sha256, category, wanted[category], k, found, explain)


def one_category(
    pipe: Pipeline,
    sha256: str,
    category: str,
    row: int,
    k: int,
    found: Recommendations,
    explain: bool,
) -> dict:
    """A ``CompleteTheLook`` answer."""
    attention = None
    if explain:
        assert found.embedding is not None  # asked for with need_embedding
        attention = attention_grid(found.embedding, row)
    return {
        **pipe.serving.versions(),
        "category": category,
        "k": k,
        "scene_sha256": sha256,
        "cached": found.cached,
        "products": found.results[category],
        "attention": attention,
    }


def all_categories(pipe: Pipeline, sha256: str, k: int, found: Recommendations) -> dict:
    """A ``CompleteTheLookAll`` answer."""
    return {
        **pipe.serving.versions(),
        "k": k,
        "scene_sha256": sha256,
        "cached": found.cached,
        "results": found.results,
    }


@router.post(
    "/complete-the-look/all",
    response_model=CompleteTheLookAll,
    responses=ERRORS,
)
async def complete_the_look_all(
    request: Request,
    image: ImageField,
    categories: Annotated[
        list[str] | None,
        Form(description=CATEGORIES, examples=[["Shoes", "Handbags, Wallets & Cases"]]),
    ] = None,
    k: KField = DEFAULT_K,
    filter: FilterField = None,
) -> dict:
    """Recommendations for every category (or the listed ones) from one encoder pass."""
    pipe = await pipeline(request, "image", "k", "filter")
    check_k(k, pipe.settings)
    flt = parse_filter(filter)
    wanted = check_categories(pipe.serving, unique(categories) or list(pipe.serving.categories))
    async with pipe.upload(image) as upload:
        found = await pipe.recommend(upload.sha256, wanted, k, upload, flt=flt)
    return all_categories(pipe, upload.sha256, k, found)
