"""Batch scoring: many scenes in one request; the scenes share encoder batches.

A bad item (not an image, unknown category, ...) gets its own error and the others succeed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile, status

from index.filters import ProductFilter
from service.answers import json_object, json_response
from service.deps import DEFAULT_K, check_categories, check_query, pipeline
from service.images import MAX_NAME
from service.params import ERRORS, FilterField, KField
from service.recommender import Pipeline
from service.schemas import BatchResponse

router = APIRouter(tags=["recommend"])


def _parse_categories(raw: str | None, n_images: int) -> list[list[str]]:
    """Per-image category lists from the JSON field, empty for all (422 naming what is wrong)."""
    if raw is None or not raw.strip():
        return [[]] * n_images
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"categories is not valid JSON: {exc}"
        ) from None
    except RecursionError:  # e.g. [[[[...]]]] a thousand deep: no shape we accept nests so
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "categories is nested too deeply: a list of names, or one such list per image",
        ) from None
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return [value] * n_images
    if isinstance(value, list) and all(
        isinstance(cs, list) and all(isinstance(c, str) for c in cs) for cs in value
    ):
        if len(value) != n_images:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"categories has {len(value)} lists but {n_images} images were uploaded",
            )
        return value
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "categories must be a JSON list of category names, or one such list per image",
    )


async def _one(
    pipe: Pipeline,
    window: asyncio.Semaphore,
    index: int,
    image: UploadFile,
    categories: list[str],
    k: int,
    flt: ProductFilter,
) -> bytes:
    """The ``BatchItem`` of one image, as JSON."""
    name = (image.filename or f"image {index}")[:MAX_NAME]
    try:
        wanted = check_categories(pipe.serving, categories)
        # A few files of the batch in memory at a time (and each within the upload budget).
        async with window, pipe.upload(image) as upload:
            found = await pipe.recommend(upload.sha256, wanted, k, upload, flt=flt)
            sha256 = upload.sha256
    except HTTPException as exc:
        error = {"status": exc.status_code, "detail": str(exc.detail)}
        item: dict[str, object] = {"scene_sha256": None, "results": None, "error": error}
    else:
        item = {"scene_sha256": sha256, "results": json_object(found.results), "error": None}
    return json_object({"index": index, "filename": name, **item})


@router.post(
    "/batch/complete-the-look",
    response_model=BatchResponse,
    responses=ERRORS,
)
async def batch_complete_the_look(
    pipe: Annotated[Pipeline, pipeline("categories", "k", "filter")],
    images: Annotated[
        list[UploadFile],
        File(
            description="scene photos (repeat the field), 1..max_batch_items; a file that is "
            "empty or not an image is an item's error, not the batch's",
            min_length=1,
        ),
    ],
    categories: Annotated[
        str | None,
        Form(
            description="JSON: a list of category names for every image, or one list per "
            "image; all categories when absent",
            examples=['[["Shoes"], ["Pants", "Shoes"]]'],
        ),
    ] = None,
    k: KField = DEFAULT_K,
    filter: FilterField = None,
) -> Response:
    """Recommendations for each uploaded scene; per-item errors do not fail the batch.
    One filter applies to every item.

    The files are read a few at a time (as many as one encoder call takes), never all at once.
    """
    flt = check_query(k, filter, pipe.settings)
    limit = pipe.settings.max_batch_items
    if len(images) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(images)} images in one batch; the limit is {limit}",
        )
    per_image = _parse_categories(categories, len(images))
    window = asyncio.Semaphore(pipe.serving.batcher.max_size)
    items = await asyncio.gather(
        *(
            _one(pipe, window, i, img, cats, k, flt)
            for i, (img, cats) in enumerate(zip(images, per_image, strict=True))
        )
    )
    return json_response(
        {**pipe.serving.versions(), "k": k, "items": b"[" + b",".join(items) + b"]"}
    )
