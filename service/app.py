"""The app factory and its lifespan: models load at startup, never at import.

Tests inject fake loaders or a cache; ``ctl serve`` builds the app from ``Settings``.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi.telemetry import TelemetryConfig
from prometheus_client import multiprocess
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.budget import UploadBudget
from service.cache import Cache, make_cache
from service.config import Settings
from service.deps import admin_denial
from service.errors import validation_error
from service.follow import Follower
from service.images import too_large
from service.metrics import ServiceMetrics, multiprocess_dir
from service.routes import admin, batch, health, products, recommend, samples, scenes, score
from service.serving import (
    CatalogLoader,
    EncoderLoader,
    ServingManager,
    encoder_lanes,
    load_current_catalog,
    load_onnx_encoder,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
ADMIN_PREFIX = "/admin/"
# Room for the multipart framing and the small form fields around the files.
FORM_OVERHEAD_BYTES = 64 * 1024


class BodyLimit:
    """413 for bodies over the limit, before parsing and without buffering them.

    A declared Content-Length over the limit is refused at once; a body streamed without one
    is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        files = self.settings.max_batch_items if scope["path"].startswith("/batch/") else 1
        limit = self.settings.max_upload_bytes * files + FORM_OVERHEAD_BYTES
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            body = json.dumps({"detail": too_large(limit).detail}).encode()
            headers = {"connection": "close"}
            response = Response(body, 413, headers, media_type="application/json")
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large(limit)
            return message

        await self.app(scope, limited, send)


class AdminGate:
    """401/403 for ``/admin/`` requests without the right token, before their body is read.

    FastAPI reads and parses a route's form before it runs the route's dependencies, so the
    token check there alone let anyone make the server take in a full upload per request.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(ADMIN_PREFIX):
            header = next((v for n, v in scope["headers"] if n == b"authorization"), None)
            denial = admin_denial(
                self.settings, None if header is None else header.decode("latin-1")
            )
            if denial is not None:
                response = await http_exception_handler(Request(scope), denial)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HoldServing:
    """Holds the current serving unit from a request's first byte to its last, so a reload
    cannot retire it under the request; routes find it in ``scope["serving"]`` (``service.deps``).

    Here rather than in a ``yield`` dependency, whose exit stack FastAPI pays for on every
    request (docs/performance.md).
    """

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager: ServingManager | None = getattr(self.state, "manager", None)
        serving = manager.current if manager is not None and scope["type"] == "http" else None
        if serving is None:  # nothing loaded yet: the routes that need a unit answer 503
            await self.app(scope, receive, send)
            return
        serving.acquire()
        try:
            scope["serving"] = serving
            await self.app(scope, receive, send)
        finally:
            serving.release()


class RequestMetrics:
    """Counts requests and times them by route template (not raw path), method and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        # Each series bound once: looking it up by its labels costs more than counting in it.
        self.series = functools.cache(
            lambda *labels: (metrics.requests.labels(*labels), metrics.latency.labels(*labels))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")
            endpoint = "static" if isinstance(route, Mount) else getattr(route, "path", "unmatched")
            requests, latency = self.series(endpoint, scope["method"], status)
            requests.inc()
            latency.observe(time.perf_counter() - start)


def _page(directory: Path) -> ASGIApp:
    """The web page's files, labelled ``static`` in the request metrics like a mount."""
    mount = Mount("/", StaticFiles(directory=directory, html=True), name="static")

    async def page(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            # No API route has this path, and the page's files are only read: there is no
            # resource here to allow a method on (the files' own answer would be a 405).
            raise StarletteHTTPException(404)
        scope["route"] = mount
        await mount.handle(scope, receive, send)

    return page


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTP error, with a 405's ``Allow`` naming the methods of every
    route on the path: Starlette names only the first route's, and ``/admin/products/{id}``
    has two (DELETE, PATCH). The methods come from the OpenAPI paths (one table per app)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        state = request.app.state
        if getattr(state, "methods_by_path", None) is None:
            table = []
            for template, item in request.app.openapi()["paths"].items():
                pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
                table.append((re.compile(pattern), {m.upper() for m in item}))
            state.methods_by_path = table
        path = request.url.path
        allowed = {m for p, ms in state.methods_by_path if p.fullmatch(path) for m in ms}
        if allowed:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(allowed))}
    return await http_exception_handler(request, exc)


def with_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``schema`` with the configured limits of form fields and parameters (routes are declared
    before settings exist, with the defaults)."""
    limits = {
        "k": ("maximum", settings.max_k),
        "images": ("maxItems", settings.max_batch_items),
        "product_ids": ("maxItems", settings.max_score_ids),
    }

    def visit(node: object) -> None:
        if isinstance(node, dict):
            for name, (key, value) in limits.items():
                prop = node.get("properties", {}).get(name) if "properties" in node else None
                if isinstance(prop, dict):
                    prop[key] = value
                if node.get("name") == name and isinstance(node.get("schema"), dict):
                    node["schema"][key] = value
            for child in node.values():
                visit(child)
        elif isinstance(node, list):
            for child in node:
                visit(child)

    visit(schema)
    return schema


def create_app(
    settings: Settings | None = None,
    *,
    encoder_loader: EncoderLoader = load_onnx_encoder,
    catalog_loader: CatalogLoader = load_current_catalog,
    cache: Cache | None = None,
) -> FastAPI:
    """The service. Loaders default to the artifacts in ``settings.artifacts_dir``."""
    settings = settings or Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(encoder_lanes(settings), thread_name_prefix="encoder")
        app.state.cache = cache or make_cache(settings, metrics)
        manager = ServingManager(settings, metrics, executor, encoder_loader, catalog_loader)
        await manager.load()
        app.state.manager = manager
        app.state.follower = Follower(manager, settings)
        app.state.follower.start()
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector's full passes, which otherwise rescan it every few thousand requests.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.follower.close()
            await manager.close()
            await app.state.cache.close()
            executor.shutdown(wait=True)
            if multiprocess_dir() is not None:  # this worker's live gauges stop counting
                multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(
        title="Complete the Look",
        summary="Scene-based complementary product recommendation (Kang et al., CVPR 2019)",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.samples = samples.find_samples(settings)
    app.state.upload_budget = UploadBudget(settings.upload_budget_bytes, settings.upload_wait_s)
    app.state.pixel_budget = UploadBudget(
        settings.pixel_budget_bytes, settings.upload_wait_s, "pixel"
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    for module in (recommend, scenes, score, batch, products, health, admin, samples):
        app.include_router(module.router)
    if STATIC_DIR.is_dir():
        # The router's fallback, not a route: it serves only paths no API route matches, so a
        # wrong method on an API path still gets the router's 405 naming the allowed ones.
        app.router.default = _page(STATIC_DIR)
    else:
        log.warning("no web page: %s is missing", STATIC_DIR)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with_limits(FastAPI.openapi(app), settings)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(HoldServing, state=app.state)
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(AdminGate, settings=settings)
    app.add_middleware(RequestMetrics, metrics=metrics)
    if settings.cors_origins:  # outermost: preflights are answered before any other check
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
