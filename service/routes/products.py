"""The catalog: categories, products, their images, and visually similar products."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, status
from fastapi.responses import FileResponse

from index.search import Similar, similar, similar_to_product
from runtime.errors import quote
from service.deps import (
    DEFAULT_K,
    ServingDep,
    check_categories,
    check_product,
    check_query,
    pipeline,
)
from service.errors import UNAVAILABLE, responses
from service.images import decode_upload
from service.params import ERRORS, FilterField, FilterQuery, ImageField, KField, KQuery
from service.recommender import Pipeline
from service.schemas import Categories, ProductInfo, SimilarResponse, image_url, product_info

router = APIRouter(tags=["catalog"])
NOT_FOUND = responses(
    {404: "no such product", 422: "a mistyped field, or k out of range", 503: UNAVAILABLE}
)


def _similar_response(pipe: Pipeline, category: str, k: int, found: list[Similar]) -> dict:
    return {
        **pipe.serving.versions(),
        "category": category,
        "k": k,
        "products": [
            {
                "id": s.id,
                "category": s.category,
                "rank": rank,
                "distance": s.distance,
                "image_url": image_url(s.id),
                **pipe.attributes.record(s.id),
            }
            for rank, s in enumerate(found, start=1)
        ],
    }


@router.get("/categories", response_model=Categories, responses=responses({503: UNAVAILABLE}))
async def categories(serving: ServingDep) -> dict:
    """The categories that can be recommended, with their product counts."""
    return {
        **serving.versions(),
        "categories": [{"name": c, "count": serving.catalog.count(c)} for c in serving.categories],
    }


@router.get("/products/{product_id}", response_model=ProductInfo, responses=NOT_FOUND)
async def get_product(product_id: str, serving: ServingDep) -> dict:
    """One catalog product."""
    p = check_product(serving, product_id)
    return product_info(p.id, p.category, serving.catalog.attributes.record(p.id))


@router.get(
    "/products/{product_id}/image",
    response_class=FileResponse,
    responses={**NOT_FOUND, 200: {"content": {"image/jpeg": {}}}},
)
async def product_image(product_id: str, serving: ServingDep) -> FileResponse:
    """The product's catalog photo."""
    path = check_product(serving, product_id).image
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image stored for {quote(product_id)}")
    return FileResponse(path, media_type="image/jpeg")


@router.get("/products/{product_id}/similar", response_model=SimilarResponse, responses=NOT_FOUND)
async def similar_products(
    product_id: str,
    pipe: Annotated[Pipeline, pipeline("k", "filter")],
    k: KQuery = DEFAULT_K,
    filter: FilterQuery = None,
) -> dict:
    """Visually similar products of the same category that pass the filter (the product
    itself excluded)."""
    flt = check_query(k, filter, pipe.settings)
    p = check_product(pipe.serving, product_id)
    found = similar_to_product(pipe.serving.catalog, p.id, k, flt, pipe.attributes)
    return _similar_response(pipe, p.category, k, found)


@router.post(
    "/similar",
    response_model=SimilarResponse,
    responses=ERRORS,
)
async def similar_to_photo(
    pipe: Annotated[Pipeline, pipeline("image", "category", "k", "filter")],
    image: ImageField,
    category: Annotated[str, Form(description="the category to search", examples=["Shoes"])],
    k: KField = DEFAULT_K,
    filter: FilterField = None,
) -> dict:
    """Products of ``category`` that pass the filter and look like the uploaded product photo."""
    flt = check_query(k, filter, pipe.settings)
    check_categories(pipe.serving, [category])
    encoder, max_pixels = pipe.serving.encoder, pipe.settings.max_image_pixels
    async with pipe.upload(image) as upload, pipe.decoding(upload, encoder.input_size):
        # Decoded and shrunk to the model input in one go: the full-size pixels live only
        # inside the pixel budget's block, not while the photo waits for the encoder.
        photo = await asyncio.to_thread(
            lambda: encoder.prepare(decode_upload(upload, max_pixels, encoder.input_size))
        )
    vector = await pipe.serving.embed_product(photo)
    found = await asyncio.to_thread(
        similar, pipe.serving.catalog, vector, category, k, (), flt, pipe.attributes
    )
    return _similar_response(pipe, category, k, found)
