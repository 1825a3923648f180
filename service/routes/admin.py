"""Operator endpoints behind the admin token: reload versions, update the catalog."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from model.runtime import ArtifactError
from service.deps import AdminDep, MetricsDep
from service.schemas import Reloaded
from service.serving import ServingManager

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])
AUTH_ERRORS: dict[int | str, dict[str, str]] = {
    401: {"description": "no bearer token"},
    403: {"description": "wrong token, or admin disabled (CTL_ADMIN_TOKEN unset)"},
}


def _manager(request: Request) -> ServingManager:
    manager: ServingManager = request.app.state.manager
    return manager


@router.post(
    "/reload",
    response_model=Reloaded,
    responses={**AUTH_ERRORS, 409: {"description": "the new version could not be loaded"}},
)
async def reload_current(request: Request, metrics: MetricsDep) -> dict:
    """Load the newest model and index and switch to them; in-flight requests finish on the old."""
    manager = _manager(request)
    try:
        old = await manager.load()
    except (ArtifactError, OSError, ValueError, KeyError) as exc:
        metrics.reloads.inc("failed")
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"reload failed, still serving the previous version: {exc}"
        ) from None
    metrics.reloads.inc("ok")
    new = manager.current
    assert new is not None
    return {
        **new.versions(),
        "previous_model_version": old.model_version,
        "previous_index_version": old.index_version,
    }
