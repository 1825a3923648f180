"""Request dependencies: the serving unit, the cache, settings, and the admin token check."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.cache import Cache
from service.config import Settings
from service.digests import DigestMemo
from service.metrics import Metrics
from service.recommender import Pipeline
from service.serving import Serving, ServingManager, UnknownCategory

DEFAULT_K = 10
"""Products per category when a request does not say (the OpenAPI default, so a constant)."""


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_cache(request: Request) -> Cache:
    cache: Cache = request.app.state.cache
    return cache


async def get_serving(request: Request) -> AsyncIterator[Serving]:
    """The current serving unit, held for the whole request so a reload cannot pull it away."""
    manager: ServingManager | None = getattr(request.app.state, "manager", None)
    with manager.hold() if manager is not None else nullcontext() as serving:
        if serving is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, "model and index are not loaded"
            )
        yield serving


_bearer = HTTPBearer(auto_error=False, description="the admin token (CTL_ADMIN_TOKEN)")


async def require_admin(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 without a bearer token, 403 with a wrong one; admin is off when no token is set."""
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "admin endpoints need 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.admin_token
    if not expected:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "admin endpoints are disabled: CTL_ADMIN_TOKEN is not set"
        )
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")


def check_k(k: int, settings: Settings) -> int:
    """422 unless 1 <= k <= max_k."""
    if not 1 <= k <= settings.max_k:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"k must be between 1 and {settings.max_k}, got {k}",
        )
    return k


def check_category(serving: Serving, category: str) -> int:
    """The model's category row, or 422 listing the valid categories."""
    try:
        return serving.category_index(category)
    except UnknownCategory as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


async def get_digests(request: Request) -> DigestMemo:
    digests: DigestMemo = request.app.state.digests
    return digests


async def get_pipeline(
    serving: Annotated[Serving, Depends(get_serving)],
    cache: Annotated[Cache, Depends(get_cache)],
    metrics: Annotated[Metrics, Depends(get_metrics)],
    settings: Annotated[Settings, Depends(get_settings)],
    digests: Annotated[DigestMemo, Depends(get_digests)],
) -> Pipeline:
    return Pipeline(serving, cache, metrics, settings, digests)


def unique(values: list[str] | None) -> list[str]:
    """Repeated form values, stripped, blanks and repeats dropped, order kept.

    Not comma-separated: category names such as 'Handbags, Wallets & Cases' contain commas.
    """
    return list(dict.fromkeys(v.strip() for v in values or [] if v.strip()))


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
CacheDep = Annotated[Cache, Depends(get_cache)]
ServingDep = Annotated[Serving, Depends(get_serving)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
AdminDep = Depends(require_admin)
