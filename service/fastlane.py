"""A fast lane for well-formed ``POST /complete-the-look`` requests, ahead of FastAPI's parsing.

FastAPI's dependency solving and multipart parsing cost about 0.6 ms a request: more than the
whole of a cached answer, and most of what the service adds to an encoder call. A request whose
body is a plain multipart form with only the documented fields, well typed and in range, is
parsed here with a few byte searches and answered by the route's own code
(:func:`~service.routes.recommend.recommendation`). Anything else (a field that is missing,
mistyped, repeated or unknown, an unusual encoding, a body over the limit) goes to FastAPI
untouched, which parses, validates and answers it as before: the API, its documentation and
its errors stay FastAPI's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.images import Upload
from service.recommender import Pipeline

# RFC 2046 boundary characters; a quoted boundary may hold any of them (spaces aside).
_CONTENT_TYPE = re.compile(
    rb"multipart/form-data;[ \t]*boundary=(?:\"([0-9A-Za-z'()+_,\-./:=?]{1,70})\""
    rb"|([0-9A-Za-z'()+_,\-./:=?]{1,70}))[ \t]*",
    re.IGNORECASE,
)
# The head of a part: a form-data disposition with a simple name (and a filename for files),
# and at most a Content-Type before or after it.
_PART_HEAD = re.compile(
    rb"(?:(?i:content-type):[^\r\n]*\r\n)?"
    rb'(?i:content-disposition):[ \t]*form-data; name="([a-z]+)"(?:; filename="([^"\\\r\n]+)")?'
    rb"[ \t]*\r\n(?:(?i:content-type):[^\r\n]*\r\n)?\r\n"
)
_K = re.compile(rb"[0-9]{1,6}")
_FIELDS = {b"image", b"category", b"k", b"explain"}
_BOOLS = {b"true": True, b"false": False}

Answer = Callable[[Pipeline, Upload, str, int, bool], Awaitable[bytes]]


class SimpleForm(NamedTuple):
    """The fields of a well-formed ``/complete-the-look`` form (``k`` not yet range-checked)."""

    image: bytes
    filename: str
    category: str
    k: int
    explain: bool


def parse_form(content_type: bytes, body: bytes, default_k: int) -> SimpleForm | None:
    """The form in ``body``, or ``None`` unless it is plainly well formed.

    Well formed: every part has a ``form-data`` disposition with a simple name (and, for the
    image only, a filename) and at most a Content-Type beside it; the names are the
    documented ones, each at most once, ``image`` and ``category`` present; ``k`` is digits,
    ``explain`` is ``true`` or ``false``, the category is UTF-8; no preamble or epilogue.
    """
    match = _CONTENT_TYPE.fullmatch(content_type)
    if match is None:
        return None
    # Positions, not splits: the image is the only big part, and it is copied once.
    delimiter = b"\r\n--" + (match[1] or match[2])
    if not body.startswith(delimiter[2:] + b"\r\n"):
        return None
    fields: dict[bytes, tuple[bytes, bytes | None]] = {}
    start, last = len(delimiter), False
    while not last:
        end = body.find(delimiter, start)
        if end < 0:
            return None
        after = end + len(delimiter)
        tail, rest = body[after : after + 2], len(body) - after - 2
        if tail == b"--" and (rest == 0 or (rest == 2 and body.endswith(b"\r\n"))):
            last = True  # the closing delimiter, with no epilogue
        elif tail != b"\r\n":  # a delimiter not followed by CRLF: not ours to judge
            return None
        head = _PART_HEAD.match(body, start, end)
        if head is None or head[1] not in _FIELDS or head[1] in fields:
            return None
        fields[head[1]] = (body[head.end() : end], head[2])
        start = after + 2
    image, category = fields.get(b"image"), fields.get(b"category")
    k = fields.get(b"k", (b"%d" % default_k, None))
    explain = fields.get(b"explain", (b"false", None))
    if image is None or image[1] is None or category is None:
        return None
    if category[1] is not None or k[1] is not None or explain[1] is not None:
        return None  # a file where a plain field belongs
    if not _K.fullmatch(k[0]) or explain[0] not in _BOOLS:
        return None
    try:
        category_name = category[0].decode()
        filename = image[1].decode()
    except UnicodeDecodeError:
        return None
    return SimpleForm(image[0], filename, category_name, int(k[0]), _BOOLS[explain[0]])


class FastLane:
    """ASGI middleware that answers well-formed ``route`` requests with ``answer`` itself."""

    def __init__(self, app: ASGIApp, route: BaseRoute, answer: Answer, default_k: int) -> None:
        self.app, self.route, self.answer, self.default_k = app, route, answer, default_k
        self.path = getattr(route, "path", None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        content_type, declared = b"", b""
        for name, value in scope["headers"]:
            if name == b"content-type" and not content_type:
                content_type = value
            elif name == b"content-length":
                declared = value
        if not content_type.lower().startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        # The body is buffered here, and the image copied out of it: twice its declared size,
        # taken from the upload budget. Without a size, or without room now, FastAPI takes the
        # request (it spools the file and waits for the budget itself).
        need = 2 * int(declared) if declared.isdigit() else 0
        budget = scope["app"].state.upload_budget
        if not need or not budget.try_take(need):
            await self.app(scope, receive, send)
            return
        try:
            await self._buffered(content_type, scope, receive, send)
        finally:
            budget.give(need)

    async def _buffered(
        self, content_type: bytes, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Read the whole body; answer it here when it is plainly well formed, else replay it
        to FastAPI."""
        scope["route"] = self.route  # the request metrics' endpoint label, as routing sets it
        messages: list[Message] = []
        try:
            while not messages or messages[-1].get("more_body", False):
                messages.append(await receive())
                if messages[-1]["type"] != "http.request":
                    break
        except HTTPException as exc:  # the body limit, while reading
            await (await http_exception_handler(Request(scope), exc))(scope, receive, send)
            return
        if messages[-1]["type"] == "http.request":
            body = b"".join(m.get("body", b"") for m in messages)
            form = parse_form(content_type, body, self.default_k)
            if form is not None and (response := await self._respond(scope, form)) is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, _replaying(messages, receive), send)

    async def _respond(self, scope: Scope, form: SimpleForm) -> ASGIApp | None:
        """The answer to ``form``, or ``None`` where FastAPI must judge the request."""
        state = scope["app"].state
        manager, settings = getattr(state, "manager", None), state.settings
        if manager is None or not 0 < len(form.image) <= settings.max_upload_bytes:
            return None
        if not 1 <= form.k <= settings.max_k:
            return None
        with manager.hold() as serving:
            if serving is None or form.category not in serving.categories:
                return None
            pipe = Pipeline(serving, state.cache, state.metrics, settings, state.digests)
            upload = Upload.of(form.filename, form.image, state.digests)
            try:
                body = await self.answer(pipe, upload, form.category, form.k, form.explain)
            except HTTPException as exc:  # a bad image: the same answer FastAPI would give
                return await http_exception_handler(Request(scope), exc)
        return _json(body)


def _json(body: bytes) -> ASGIApp:
    """A 200 JSON answer with the headers ``Response`` would set (without building one)."""
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return respond


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives ``messages`` again, then whatever ``receive`` gives."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay
