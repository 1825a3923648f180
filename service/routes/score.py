"""Scoring given products against a scene, so a frontend can re-rank its own candidates."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, status
from pydantic import StringConstraints

from index.search import score
from index.store import PRODUCT_ID_PATTERN
from service.deps import pipeline, unique
from service.params import ERRORS, ImageField
from service.recommender import Pipeline
from service.schemas import ScoreResponse

router = APIRouter(tags=["recommend"])


# Ids outside the one product id format cannot be in the catalog: a 422 that quotes a prefix
# of the bad one, not an echo of megabytes in ``unknown_ids``.
ProductIdItem = Annotated[str, StringConstraints(pattern=PRODUCT_ID_PATTERN)]


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=ERRORS,
)
async def score_products(
    pipe: Annotated[Pipeline, pipeline("image")],
    image: ImageField,
    product_ids: Annotated[
        list[ProductIdItem],
        Form(
            description="product ids to score (repeat the field)",
            examples=[["0a1b2c3d4e5f60718293a4b5c6d7e8f9"]],
            min_length=1,
        ),
    ],
) -> dict:
    """d*, d_global and d_local of each product for the scene; unknown ids are listed."""
    ids = unique(product_ids)  # never empty: an empty id does not match the id pattern
    if len(ids) > pipe.settings.max_score_ids:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(ids)} product ids; at most {pipe.settings.max_score_ids} per request",
        )
    async with pipe.upload(image) as upload:
        emb, _ = await pipe.embed(upload)
    scored, unknown = await asyncio.to_thread(
        score, pipe.serving.catalog, emb, pipe.serving.encoder.categories, ids
    )
    return {
        **pipe.serving.versions(),
        "scene_sha256": upload.sha256,
        "scores": [asdict(s) for s in scored],
        "unknown_ids": unknown,
    }
