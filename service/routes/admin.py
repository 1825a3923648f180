"""Operator endpoints behind the admin token: reload versions, update the catalog and the
products' attributes."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Body, Form, HTTPException, Path, Query, status

from index.attributes import AttributesBusyError, AttributesError, ProductAttributes
from index.build import BuildError, NewProduct, add_products, remove_products
from index.catalog_import import CatalogImportError, import_catalog
from index.rows import TableError
from index.store import (
    PRODUCT_ID_PATTERN,
    IndexStore,
    IndexStoreError,
    InvalidProductIdError,
    UnknownProductError,
)
from runtime.artifacts import ArtifactError
from runtime.errors import quote
from service.deps import AdminDep, FollowerDep, ManagerDep, check_product, pipeline
from service.errors import AUTH, UNAVAILABLE, UPLOAD, no_product, responses
from service.follow import Follower, published_versions
from service.images import decode_upload
from service.params import ImageField
from service.recommender import Pipeline
from service.schemas import CatalogImport, CatalogUpdate, ProductInfo, Reloaded, product_info
from service.serving import Serving, ServingManager

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
ID_FORMAT = "1-128 characters of A-Z a-z 0-9 . _ -, not starting with a dot"


async def _switch(
    pipe: Pipeline, manager: ServingManager, follower: Follower, reload_encoder: bool
) -> tuple[Serving, Serving]:
    """Serve the newest versions: (the unit replaced, the one now served); 409 (still serving
    the old ones) when they do not load. A catalog update (``reload_encoder=False``) loads the
    version it published only if this process's follower has not loaded it already."""
    published: tuple[str | None, str | None] = (None, None)
    if not reload_encoder:
        published = await asyncio.to_thread(published_versions, pipe.settings.artifacts_dir)
    try:
        old = await manager.load(reload_encoder=reload_encoder, unless_serving=published)
    except (ArtifactError, IndexStoreError, OSError, ValueError, KeyError) as exc:
        pipe.metrics.reloads.labels("failed").inc()
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"reload failed, still serving the previous version: {exc}"
        ) from None
    pipe.metrics.reloads.labels("ok").inc()
    await follower.announce()
    assert manager.current is not None
    return old, manager.current


async def _catalog_update(
    pipe: Pipeline, manager: ServingManager, follower: Follower, **ids: list[str]
) -> dict:
    _, new = await _switch(pipe, manager, follower, reload_encoder=False)
    return {**new.versions(), **ids, "products": len(new.catalog)}


@router.post(
    "/reload",
    response_model=Reloaded,
    responses=responses({**AUTH, 409: "the new version could not be loaded", 503: UNAVAILABLE}),
)
async def reload_current(
    pipe: Annotated[Pipeline, pipeline()], manager: ManagerDep, follower: FollowerDep
) -> dict:
    """Load the newest model and index and switch to them; in-flight requests finish on the old."""
    old, new = await _switch(pipe, manager, follower, reload_encoder=True)
    return {
        **new.versions(),
        "previous_model_version": old.model_version,
        "previous_index_version": old.index_version,
    }


@router.post(
    "/products",
    response_model=CatalogUpdate,
    responses=responses(
        {**AUTH, **UPLOAD, 409: "the id is already in the catalog, or the update failed"}
    ),
)
async def add_product(
    pipe: Annotated[Pipeline, pipeline("product_id", "category", "image")],
    manager: ManagerDep,
    follower: FollowerDep,
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
    return await _catalog_update(pipe, manager, follower, added=[product_id])


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
    pipe: Annotated[Pipeline, pipeline()],
    manager: ManagerDep,
    follower: FollowerDep,
) -> dict:
    """Publish a new index version without the product, then serve that."""
    store = IndexStore.for_artifacts(pipe.settings.artifacts_dir)
    try:
        await asyncio.to_thread(
            remove_products, store, pipe.serving.encoder, [product_id], pipe.settings.ann_threshold
        )
    except UnknownProductError:
        raise no_product(product_id) from None
    except BuildError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return await _catalog_update(pipe, manager, follower, removed=[product_id])


@router.patch(
    "/products/{product_id}",
    response_model=ProductInfo,
    responses=responses(
        {
            **AUTH,
            400: "the body is not JSON",
            404: "no such product",
            409: "another write (an import) held the attribute store too long; try again",
            422: "an unknown field, a mistyped value, or attributes over their bounds",
            503: UNAVAILABLE,
        }
    ),
)
async def patch_product(
    product_id: Annotated[str, Path(description=ID_FORMAT, pattern=PRODUCT_ID_PATTERN)],
    update: ProductAttributes,
    pipe: Annotated[Pipeline, pipeline()],
    follower: FollowerDep,
) -> dict:
    """Change a product's attributes (stock, price, title, ...): the fields sent, ``null``
    resetting one; ``attributes`` keys are merged (``null`` removes a key). Nothing is
    re-embedded and no index version is made; every replica follows within its follow bound,
    this one before it answers."""
    p = check_product(pipe.serving, product_id)
    changes = {name: getattr(update, name) for name in update.model_fields_set}
    store = IndexStore.for_artifacts(pipe.settings.artifacts_dir).attributes
    try:
        _, stored = await asyncio.to_thread(store.update, {product_id: changes})
    except AttributesError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    except AttributesBusyError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    await follower.sync_attributes()
    await follower.announce()
    return product_info(p.id, p.category, stored[product_id])


IMPORT_EXAMPLE = (
    '{"id": "sku-1", "category": "Shoes", "image": "images/products/sku-1.jpg", '
    '"price": 49.9, "in_stock": true, "color": "red"}\n'
)


@router.post(
    "/catalog/import",
    response_model=CatalogImport,
    responses=responses(
        {
            **AUTH,
            409: "another catalog write held the store too long, or the update failed",
            422: "bad rows (each with its line and reason; nothing applied unless skip_bad)",
            503: UNAVAILABLE,
        }
    ),
)
async def import_products(
    pipe: Annotated[Pipeline, pipeline()],
    manager: ManagerDep,
    follower: FollowerDep,
    rows: Annotated[
        str,
        Body(
            # Any content type is read as text; text/plain is what OpenAPI tools can send.
            media_type="text/plain",
            description="JSON lines (sent as text/plain or application/x-ndjson): id, "
            "category, image (an http(s) URL, or a path on the server, relative to "
            "CTL_DATA_DIR) and any attributes",
            examples=[IMPORT_EXAMPLE],
        ),
    ],
    sync: Annotated[bool, Query(description="also remove products the rows lack")] = False,
    skip_bad: Annotated[bool, Query(description="apply the good rows of a bad table")] = False,
) -> dict:
    """``ctl catalog import`` for a running service: embeds new products and changed images,
    sets attributes, makes at most one index version, then serves it."""
    settings = pipe.settings
    store = IndexStore.for_artifacts(settings.artifacts_dir)
    with tempfile.TemporaryDirectory(prefix="ctl-import-") as tmp:
        table = FilePath(tmp) / "rows.jsonl"
        table.write_text(rows)
        try:
            report = await asyncio.to_thread(
                import_catalog,
                store,
                pipe.serving.encoder,
                table,
                sync=sync,
                skip_bad=skip_bad,
                ann_threshold=settings.ann_threshold,
                base_dir=settings.data_dir,
            )
        except (CatalogImportError, TableError) as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        except (AttributesBusyError, BuildError) as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    if report.version != pipe.serving.index_version:
        _, now = await _switch(pipe, manager, follower, reload_encoder=False)
    else:
        await follower.sync_attributes()
        await follower.announce()
        now = pipe.serving
    return {**report.to_dict(), **now.versions()}
