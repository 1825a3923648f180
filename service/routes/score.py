"""Scoring given products against a scene, so a frontend can re-rank its own candidates."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status

from index.search import score
from service.deps import PipelineDep, unique
from service.routes.recommend import ERRORS
from service.schemas import ScoreResponse

router = APIRouter(tags=["recommend"])


@router.post("/score", response_model=ScoreResponse, responses=ERRORS)
async def score_products(
    pipe: PipelineDep,
    image: Annotated[UploadFile, File(description="the scene photo (JPEG, PNG or WebP)")],
    product_ids: Annotated[
        list[str],
        Form(
            description="product ids to score (repeat the field)",
            examples=[["0a1b2c3d4e5f60718293a4b5c6d7e8f9"]],
        ),
    ],
) -> dict:
    """d*, d_global and d_local of each product for the scene; unknown ids are listed."""
    ids = unique(product_ids)
    if not ids:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "product_ids is empty")
    if len(ids) > pipe.settings.max_score_ids:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(ids)} product ids; at most {pipe.settings.max_score_ids} per request",
        )
    upload = await pipe.read(image)
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
