"""One error body for every 4xx (and 503): ``{"detail": "<what is wrong>"}``, as documented.

FastAPI answers its own validation errors with a list of error objects; here they become the
same one-string body as every other error, naming each bad field without echoing its value
(a client's megabyte-long value must not come back in the answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, QueryParams

from runtime.errors import quote

MAX_DETAIL = 2000
"""Characters of a validation answer's detail at most (one line per bad field)."""

AUTH = {
    401: "no bearer token",
    403: "wrong token, or admin disabled (CTL_ADMIN_TOKEN unset)",
}
UNAVAILABLE = "model and index not loaded yet, or the upload budget is spent (see Retry-After)"
UPLOAD = {
    400: "the body is not valid multipart/form-data (broken framing, or too many parts)",
    413: "upload over the size limit, image over the pixel limit, or too many images",
    415: "not an image, or not JPEG (MPO included)/PNG/WebP",
    422: "truncated image, empty file, unknown category (the valid ones are listed), "
    "k out of range, a missing, repeated or mistyped field",
    503: UNAVAILABLE,
}
RETRY = {
    "headers": {
        "Retry-After": {
            "description": "seconds to wait before trying again",
            "schema": {"type": "integer"},
        }
    }
}
"""What a 503 adds to its documentation: the ``Retry-After`` header."""


class ErrorBody(BaseModel):
    """What every error answer holds: the problem, in words."""

    detail: str = Field(examples=["k must be between 1 and 100, got 0"])


def responses(codes: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, each with :class:`ErrorBody`.

    A route that lists 422 here gets no FastAPI default 422 (the list form) beside it.
    """
    return {
        code: {"model": ErrorBody, "description": description, **(RETRY if code == 503 else {})}
        for code, description in codes.items()
    }


def no_product(product_id: str) -> HTTPException:
    """The 404 of a product id the catalog does not hold."""
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no product with id {quote(product_id)}")


async def sent_fields(request: Request) -> FormData | QueryParams:
    """The request's fields: its query on a GET, else its form (parsed already by FastAPI and
    cached on the request)."""
    return request.query_params if request.method == "GET" else await request.form()


def _empty(sent: FormData | QueryParams | None, name: str) -> bool:
    values = sent.getlist(name) if sent is not None else []
    return bool(values) and all(isinstance(v, str) and not v.strip() for v in values)


def describe(exc: RequestValidationError, sent: FormData | QueryParams | None = None) -> str:
    """``field: problem`` for each error, ``; ``-joined; values quoted by a bounded prefix. A
    field ``sent`` empty is said to be empty (FastAPI calls an empty form value missing)."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc) or "request"
        message = str(error.get("msg", "invalid"))
        if loc and _empty(sent, loc[-1]):
            message = "is empty"
        elif error.get("type") == "string_pattern_mismatch" and isinstance(error.get("input"), str):
            message += f" (got {quote(error['input'])})"
        parts.append(f"{where}: {message}")
    detail = "; ".join(parts) or "invalid request"
    return detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """The 422 of a request FastAPI could not validate, in the one error body."""
    assert isinstance(exc, RequestValidationError)
    try:
        sent = await sent_fields(request)
    except Exception:  # a body that is no form: nothing was sent empty
        sent = None
    return JSONResponse({"detail": describe(exc, sent)}, status_code=422)
