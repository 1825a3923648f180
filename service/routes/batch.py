"""Batch scoring: many scenes in one request; the scenes share encoder batches.

A bad item (not an image, unknown category, ...) gets its own error and the others succeed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status

from service.deps import DEFAULT_K, PipelineDep, check_category, check_k
from service.recommender import Pipeline, with_ranks
from service.routes.recommend import ERRORS, KField
from service.schemas import BatchResponse

router = APIRouter(tags=["recommend"])


def _parse_categories(raw: str | None, n_images: int, default: list[str]) -> list[list[str]]:
    """Per-image category lists from the JSON field (422 naming what is wrong)."""
    if raw is None or not raw.strip():
        return [default] * n_images
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"categories is not valid JSON: {exc}"
        ) from None
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return [value or default] * n_images
    if isinstance(value, list) and all(
        isinstance(cs, list) and all(isinstance(c, str) for c in cs) for cs in value
    ):
        if len(value) != n_images:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"categories has {len(value)} lists but {n_images} images were uploaded",
            )
        return [cs or default for cs in value]
    raise HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        "categories must be a JSON list of category names, or one such list per image",
    )


async def _one(
    pipe: Pipeline, index: int, image: UploadFile, categories: list[str], k: int
) -> dict:
    name = image.filename or f"image {index}"
    try:
        for category in categories:
            check_category(pipe.serving, category)
        upload = await pipe.read(image)
        results, _ = await pipe.recommend(upload, list(dict.fromkeys(categories)), k)
    except HTTPException as exc:
        return {
            "index": index,
            "filename": name,
            "error": {"status": exc.status_code, "detail": str(exc.detail)},
        }
    return {
        "index": index,
        "filename": name,
        "scene_sha256": upload.sha256,
        "results": {c: with_ranks(items) for c, items in results.items()},
    }


@router.post("/batch/complete-the-look", response_model=BatchResponse, responses=ERRORS)
async def batch_complete_the_look(
    pipe: PipelineDep,
    images: Annotated[list[UploadFile], File(description="scene photos (repeat the field)")],
    categories: Annotated[
        str | None,
        Form(
            description="JSON: a list of category names for every image, or one list per "
            "image; all categories when absent",
            examples=['[["Shoes"], ["Pants", "Shoes"]]'],
        ),
    ] = None,
    k: KField = DEFAULT_K,
) -> dict:
    """Recommendations for each uploaded scene; per-item errors do not fail the batch."""
    check_k(k, pipe.settings)
    limit = pipe.settings.max_batch_items
    if len(images) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(images)} images in one batch; the limit is {limit}",
        )
    per_image = _parse_categories(categories, len(images), list(pipe.serving.categories))
    items = await asyncio.gather(
        *(
            _one(pipe, i, img, cats, k)
            for i, (img, cats) in enumerate(zip(images, per_image, strict=True))
        )
    )
    return {**pipe.serving.versions(), "k": k, "items": items}
