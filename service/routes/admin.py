"""Operator endpoints behind the admin token: reload versions, update the catalog."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Request, status

from index.build import BuildError, NewProduct, add_products, remove_products
from index.store import (
    PRODUCT_ID_PATTERN,
    IndexStore,
    IndexStoreError,
    InvalidProductIdError,
    UnknownProductError,
    quote,
)
from model.runtime import ArtifactError
from service.deps import AdminDep, pipeline
from service.errors import AUTH, UNAVAILABLE, UPLOAD, responses
from service.images import decode_upload
from service.routes.recommend import ImageField
from service.schemas import CatalogUpdate, Reloaded
from service.serving import Serving, ServingManager

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
ID_FORMAT = "1-128 characters of A-Z a-z 0-9 . _ -, not starting with a dot"


async def _switch(request: Request, reload_encoder: bool) -> tuple[Serving, Serving]:
    """Serve the newest versions: (the unit replaced, the one now served); 409 (still serving
    the old ones) when they do not load."""
    manager: ServingManager = request.app.state.manager
    reloads = request.app.state.metrics.reloads
    try:
        old = await manager.load(reload_encoder=reload_encoder)
    except (ArtifactError, IndexStoreError, OSError, ValueError, KeyError) as exc:
        reloads.labels("failed").inc()
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"reload failed, still serving the previous version: {exc}"
        ) from None
    reloads.labels("ok").inc()
    await request.app.state.follower.announce()
    assert manager.current is not None
    return old, manager.current


@router.post(
    "/reload",
    response_model=Reloaded,
    responses=responses({**AUTH, 409: "the new version could not be loaded", 503: UNAVAILABLE}),
)
async def reload_current(request: Request) -> dict:
    """Load the newest model and index and switch to them; in-flight requests finish on the old."""
    old, new = await _switch(request, reload_encoder=True)
    return {
        **new.versions(),
        "previous_model_version": old.model_version,
        "previous_index_version": old.index_version,
    }


async def _catalog_update(request: Request, **ids: list[str]) -> dict:
    _, new = await _switch(request, reload_encoder=False)
    return {**new.versions(), **ids, "products": len(new.catalog)}


@router.post(
    "/products",
    response_model=CatalogUpdate,
    responses=responses(
        {**AUTH, **UPLOAD, 409: "the id is already in the catalog, or the update failed"}
    ),
)
async def add_product(
    request: Request,
    product_id: Annotated[
        str,
        Form(
            description=f"the new id: {ID_FORMAT}", pattern=PRODUCT_ID_PATTERN, examples=["sku-1"]
        ),
    ],
    category: Annotated[str, Form(examples=["Shoes"])],
    image: ImageField,
) -> dict:
    """Embed one new product and publish a new index version with it, then serve that."""
    pipe = await pipeline(request, "product_id", "category", "image")
    settings, serving = pipe.settings, pipe.serving
    if category not in serving.encoder.categories:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"unknown category {quote(category)}; valid: {', '.join(serving.encoder.categories)}",
        )
    store = IndexStore.for_artifacts(settings.artifacts_dir)
    async with pipe.upload(image) as upload, pipe.decoding(upload):
        await asyncio.to_thread(decode_upload, upload, settings.max_image_pixels)
        product = NewProduct(product_id, category, upload.data)
        try:
            await asyncio.to_thread(
                add_products, store, serving.encoder, [product], settings.ann_threshold
            )
        except InvalidProductIdError as exc:  # the form checked it; the store checks again
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        except BuildError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return await _catalog_update(request, added=[product_id])


@router.delete(
    "/products/{product_id}",
    response_model=CatalogUpdate,
    responses=responses(
        {
            **AUTH,
            404: "no such product",
            409: "the update failed",
            422: f"not a product id ({ID_FORMAT})",
            503: UNAVAILABLE,
        }
    ),
)
async def delete_product(
    product_id: Annotated[str, Path(description=ID_FORMAT, pattern=PRODUCT_ID_PATTERN)],
    request: Request,
) -> dict:
    """Publish a new index version without the product, then serve that."""
    pipe = await pipeline(request)
    store = IndexStore.for_artifacts(pipe.settings.artifacts_dir)
    try:
        await asyncio.to_thread(
            remove_products, store, pipe.serving.encoder, [product_id], pipe.settings.ann_threshold
        )
    except UnknownProductError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no product with id {quote(product_id)}"
        ) from None
    except BuildError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return await _catalog_update(request, removed=[product_id])
