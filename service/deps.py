"""Request dependencies: the serving unit, the cache, settings, and the admin token check."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from service.config import Settings
from service.metrics import ServiceMetrics
from service.recommender import Pipeline
from service.serving import Serving, UnknownCategory

DEFAULT_K = 10
"""Products per category when a request does not say (the OpenAPI default, so a constant)."""


async def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_serving(request: Request) -> Serving:
    """The serving unit this request holds to its end (``service.app.HoldServing``), so a
    reload cannot pull it away; 503 before the first load."""
    serving: Serving | None = request.scope.get("serving")
    if serving is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "model and index are not loaded")
    return serving


_bearer = HTTPBearer(auto_error=False, description="the admin token (CTL_ADMIN_TOKEN)")


def admin_denial(settings: Settings, authorization: str | None) -> HTTPException | None:
    """Why a request with this Authorization header may not use the admin endpoints (401
    without a bearer token, 403 with a wrong one or none configured), or ``None``."""
    scheme, token = get_authorization_scheme_param(authorization)
    if not authorization or scheme.lower() != "bearer" or not token:
        return HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "admin endpoints need 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    expected = settings.admin_token
    if not expected:
        return HTTPException(
            status.HTTP_403_FORBIDDEN, "admin endpoints are disabled: CTL_ADMIN_TOKEN is not set"
        )
    if not hmac.compare_digest(token.encode(), expected.encode()):
        return HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")
    return None


async def require_admin(
    request: Request,
    settings: Annotated[Settings, Depends(app_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The admin token check as a dependency (it documents the bearer scheme). The app checks
    the same before any admin body is read (``service.app.AdminGate``); this is the second lock.
    """
    denial = admin_denial(settings, request.headers.get("authorization"))
    if denial is not None:
        raise denial


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


def check_categories(serving: Serving, categories: list[str]) -> dict[str, int]:
    """Each category with its model row (resolved once per request), or 422 at the first
    unknown one."""
    return {category: check_category(serving, category) for category in categories}


async def get_pipeline(request: Request) -> Pipeline:
    """The request's pipeline. One dependency reading ``app.state``, not one per part, and no
    ``yield``: FastAPI's solving costs per dependency, and more for one with an exit step
    (docs/performance.md)."""
    state = request.app.state
    serving = await get_serving(request)
    return Pipeline(serving, state.cache, state.metrics, state.settings, state.upload_budget)


def single_fields(*names: str) -> Any:
    """A dependency: 422 when one of these form fields is sent more than once.

    FastAPI keeps the last of repeated values silently; a client that sent two images (or two
    categories) would get an answer for one of them without knowing which.
    """

    async def check(request: Request) -> None:
        form = await request.form()  # the form FastAPI parsed already (cached on the request)
        for name in names:
            count = len(form.getlist(name))
            if count > 1:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"{name}: sent {count} times; send it once",
                )

    return Depends(check)


def unique(values: list[str] | None) -> list[str]:
    """Repeated form values, stripped, blanks and repeats dropped, order kept.

    Not comma-separated: category names such as 'Handbags, Wallets & Cases' contain commas.
    """
    return list(dict.fromkeys(v.strip() for v in values or [] if v.strip()))


SettingsDep = Annotated[Settings, Depends(app_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
ServingDep = Annotated[Serving, Depends(get_serving)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
AdminDep = Depends(require_admin)
