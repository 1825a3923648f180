"""The hit benchmark's baseline: an ASGI app that does nothing but read each request's body and
answer a fixed JSON body (``FLOOR_BODY_BYTES`` long, the size of a real answer).

Served under uvicorn with the settings ``ctl serve`` uses, it gives the cost of the HTTP layer
alone on this machine in the same run: no service answers a cached request faster than this.
"""

from __future__ import annotations

import os

from starlette.types import Receive, Scope, Send

_SIZE = int(os.environ.get("FLOOR_BODY_BYTES", "2048"))
BODY = b'{"padding":"' + b"x" * max(0, _SIZE - 14) + b'"}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body (as the service must), then answer ``BODY``."""
    if scope["type"] != "http":  # the lifespan: nothing to load
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-length", b"%d" % len(BODY)), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})
