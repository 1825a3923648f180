"""Liveness, readiness (what is loaded and where it runs) and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep, pipeline
from service.errors import responses
from service.recommender import Pipeline
from service.schemas import Health, Ready

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """The process answers (it may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=responses({503: "not loaded yet"}))
async def readyz(pipe: Annotated[Pipeline, pipeline()]) -> dict:
    """Model and index are loaded; the execution providers and FAISS device in use, and a
    warning for each GPU build that runs on the CPU."""
    serving = pipe.serving
    return {
        **serving.versions(),
        "status": "ready",
        "precision": serving.encoder.precision,
        "providers": serving.encoder.providers,
        "faiss_device": serving.catalog.faiss_device,
        "warnings": serving.warnings,
        "cache": pipe.cache.backend,
        "categories": len(serving.categories),
    }


@router.get("/metrics", response_class=Response)
async def prometheus_exposition(metrics: MetricsDep) -> Response:
    """Prometheus text exposition (every worker's, merged, under ``ctl serve --workers N``)."""
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
