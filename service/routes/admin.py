"""Operator endpoints behind the admin token: reload versions, update the catalog."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status

from index.build import BuildError, NewProduct, add_products, remove_products
from index.store import IndexStore, IndexStoreError, UnknownProductError
from model.runtime import ArtifactError
from service.deps import AdminDep, MetricsDep, SettingsDep
from service.images import decode_image, read_upload
from service.routes.recommend import ERRORS
from service.schemas import CatalogUpdate, Reloaded
from service.serving import ServingManager

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
AUTH_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "no bearer token"},
    403: {"description": "wrong token, or admin disabled (CTL_ADMIN_TOKEN unset)"},
}


def _manager(request: Request) -> ServingManager:
    manager: ServingManager = request.app.state.manager
    return manager


async def _switch(request: Request, metrics: MetricsDep, reload_encoder: bool) -> tuple[str, str]:
    """Serve the newest versions; 409 (still serving the old ones) when they do not load."""
    try:
        old = await _manager(request).load(reload_encoder=reload_encoder)
    except (ArtifactError, IndexStoreError, OSError, ValueError, KeyError) as exc:
        metrics.reloads.inc("failed")
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"reload failed, still serving the previous version: {exc}"
        ) from None
    metrics.reloads.inc("ok")
    await request.app.state.follower.announce()
    return old.model_version, old.index_version


@router.post(
    "/reload",
    response_model=Reloaded,
    responses={**AUTH_ERRORS, 409: {"description": "the new version could not be loaded"}},
)
async def reload_current(request: Request, metrics: MetricsDep) -> dict:
    """Load the newest model and index and switch to them; in-flight requests finish on the old."""
    old_model, old_index = await _switch(request, metrics, reload_encoder=True)
    new = _manager(request).current
    assert new is not None
    return {
        **new.versions(),
        "previous_model_version": old_model,
        "previous_index_version": old_index,
    }


async def _catalog_update(request: Request, metrics: MetricsDep, **ids: list[str]) -> dict:
    await _switch(request, metrics, reload_encoder=False)
    new = _manager(request).current
    assert new is not None
    return {**new.versions(), **ids, "products": len(new.catalog)}


@router.post(
    "/products",
    response_model=CatalogUpdate,
    responses={**AUTH_ERRORS, **ERRORS, 409: {"description": "the id is already in the catalog"}},
)
async def add_product(
    request: Request,
    settings: SettingsDep,
    metrics: MetricsDep,
    product_id: Annotated[str, Form(min_length=1, max_length=200, examples=["my-sku-123"])],
    category: Annotated[str, Form(examples=["Shoes"])],
    image: Annotated[UploadFile, File(description="the product photo (JPEG, PNG or WebP)")],
) -> dict:
    """Embed one new product and publish a new index version with it, then serve that."""
    manager = _manager(request)
    serving = manager.current
    assert serving is not None
    if category not in serving.encoder.categories:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"unknown category {category!r}; valid: {', '.join(serving.encoder.categories)}",
        )
    upload = await read_upload(image, settings.max_upload_bytes)
    await asyncio.to_thread(decode_image, upload, settings.max_image_pixels)
    store = IndexStore.for_artifacts(settings.artifacts_dir)
    product = NewProduct(product_id, category, upload.data)
    try:
        await asyncio.to_thread(
            add_products, store, serving.encoder, [product], settings.ann_threshold
        )
    except BuildError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return await _catalog_update(request, metrics, added=[product_id])


@router.delete(
    "/products/{product_id}",
    response_model=CatalogUpdate,
    responses={**AUTH_ERRORS, 404: {"description": "no such product"}},
)
async def delete_product(
    product_id: str, request: Request, settings: SettingsDep, metrics: MetricsDep
) -> dict:
    """Publish a new index version without the product, then serve that."""
    serving = _manager(request).current
    assert serving is not None
    store = IndexStore.for_artifacts(settings.artifacts_dir)
    try:
        await asyncio.to_thread(
            remove_products, store, serving.encoder, [product_id], settings.ann_threshold
        )
    except UnknownProductError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no product with id {product_id!r}"
        ) from None
    except BuildError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return await _catalog_update(request, metrics, removed=[product_id])
