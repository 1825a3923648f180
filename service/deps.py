"""What routes take from the app, each as an ``Annotated`` dependency (the one way routes
reach it): the serving unit, the request's pipeline, the app's collaborators, the admin check.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import FormData, QueryParams

from index.filters import FilterError, ProductFilter
from index.search import Product
from runtime.errors import quote
from service.config import Settings
from service.errors import no_product, sent_fields
from service.follow import Follower
from service.metrics import ServiceMetrics
from service.recommender import Pipeline
from service.serving import Serving, ServingManager, UnknownCategory

DEFAULT_K = 10
"""Products per category when a request does not say (the OpenAPI default, so a constant)."""


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
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The admin token check as a dependency (it documents the bearer scheme). The app checks
    the same before any admin body is read (``service.app.AdminGate``); this is the second lock.
    """
    denial = admin_denial(request.app.state.settings, request.headers.get("authorization"))
    if denial is not None:
        raise denial


def check_query(k: int, raw_filter: str | None, settings: Settings) -> ProductFilter:
    """The ``filter`` field (JSON; absent: in-stock products only), or 422 naming the problem
    with it or with ``k`` (unless 1 <= k <= max_k): what every recommending route checks first.
    """
    if not 1 <= k <= settings.max_k:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"k must be between 1 and {settings.max_k}, got {quote(str(k))}",
        )
    try:
        return ProductFilter.parse(raw_filter)
    except FilterError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


def check_categories(serving: Serving, categories: list[str]) -> dict[str, int]:
    """Each category (every served one when none is named) with its model row (resolved once
    per request), or 422 at the first unknown one, listing the valid categories."""
    try:
        return {
            category: serving.category_index(category)
            for category in categories or serving.categories
        }
    except UnknownCategory as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None


def check_product(serving: Serving, product_id: str) -> Product:
    """The catalog product ``product_id``, or 404."""
    product = serving.catalog.product(product_id)
    if product is None:
        raise no_product(product_id)
    return product


def check_single(params: FormData | QueryParams, names: tuple[str, ...]) -> None:
    """422 when one of the fields ``names`` was sent more than once, or sent empty: FastAPI
    keeps the last of repeated values silently (a client that sent two images would get an
    answer for one of them without knowing which), and takes an empty form value for a missing
    one (an empty ``k`` meant 10). The one check of single fields, form (POST) or query (GET).
    """
    for name in names:
        values = params.getlist(name)
        if len(values) > 1:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{name}: sent {len(values)} times; send it once",
            )
        if values and isinstance(values[0], str) and not values[0].strip():
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: is empty")


def pipeline(*single_fields: str) -> Any:
    """A dependency on the request's :class:`Pipeline`: ``Annotated[Pipeline, pipeline(...)]``;
    422 when one of the fields ``single_fields`` (form or query) was sent more than once or
    empty (:func:`check_single`), 503 before the first load."""

    async def get(request: Request) -> Pipeline:
        if single_fields:
            check_single(await sent_fields(request), single_fields)
        state, serving = request.app.state, await get_serving(request)
        return Pipeline(
            serving,
            state.cache,
            state.metrics,
            state.settings,
            state.upload_budget,
            state.pixel_budget,
            serving.catalog.attributes,
        )

    return Depends(get)


def _state(name: str) -> Any:
    """A dependency on the app's ``name`` (set by ``service.app.create_app``)."""

    async def get(request: Request) -> Any:  # async: a plain def would run in a thread
        return getattr(request.app.state, name)

    return Depends(get)


def unique(values: list[str] | None) -> list[str]:
    """Repeated form values, stripped, blanks and repeats dropped, order kept.

    Not comma-separated: category names such as 'Handbags, Wallets & Cases' contain commas.
    """
    return list(dict.fromkeys(v.strip() for v in values or [] if v.strip()))


ServingDep = Annotated[Serving, Depends(get_serving)]
MetricsDep = Annotated[ServiceMetrics, _state("metrics")]
ManagerDep = Annotated[ServingManager, _state("manager")]
FollowerDep = Annotated[Follower, _state("follower")]
SamplesDep = Annotated[dict[str, Path], _state("samples")]
AdminDep = Depends(require_admin)
