"""Liveness, readiness (what is loaded and where it runs) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import ServingDep
from service.errors import responses
from service.schemas import Health, Ready

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """The process answers (it may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Ready, responses=responses({503: "not loaded yet"}))
async def readyz(request: Request, serving: ServingDep) -> dict:
    """Model and index are loaded; the execution providers and FAISS device in use, and a
    warning for each GPU build that runs on the CPU."""
    return {
        **serving.versions(),
        "status": "ready",
        "precision": serving.encoder.precision,
        "providers": serving.encoder.providers,
        "faiss_device": serving.catalog.faiss_device,
        "warnings": serving.warnings,
        "cache": request.app.state.cache.backend,
        "categories": len(serving.categories),
    }


@router.get("/metrics", response_class=Response)
async def prometheus_exposition(request: Request) -> Response:
    """Prometheus text exposition (every worker's, merged, under ``ctl serve --workers N``)."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
