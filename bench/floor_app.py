"""The hit benchmark's baselines: apps that answer a fixed JSON body (``FLOOR_BODY_BYTES`` long,
the size of a real answer) and do nothing else. Served under uvicorn with the settings
``ctl serve`` uses, they give in the same run what no service on this machine can beat.

``app`` is ``http_floor`` (the HTTP layer alone: it reads the body and answers) or, with
``FLOOR_APP=fastapi``, ``framework_floor``: FastAPI with the service's hit routes' own signatures
(the upload form of ``POST /complete-the-look``, the path and query of ``GET
/scenes/{id}/complete-the-look``), so that FastAPI parses each request as it does in the
service: the framework's own cost.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import FastAPI, File, Form, Path, Query, Response, UploadFile
from starlette.types import Receive, Scope, Send

_SIZE = int(os.environ.get("FLOOR_BODY_BYTES", "2048"))
BODY = b'{"padding":"' + b"x" * max(0, _SIZE - 14) + b'"}'


async def http_floor(scope: Scope, receive: Receive, send: Send) -> None:
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


framework_floor = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})


@framework_floor.get("/readyz")
async def ready() -> Response:
    return Response(BODY, media_type="application/json")


@framework_floor.post("/complete-the-look")
async def post_hit(
    image: Annotated[UploadFile, File()],
    category: Annotated[str, Form()],
    k: Annotated[int, Form()] = 10,
    explain: Annotated[bool, Form()] = False,
) -> Response:
    return Response(BODY, media_type="application/json")


@framework_floor.get("/scenes/{scene_id}/complete-the-look")
async def get_hit(
    scene_id: Annotated[str, Path(pattern="^[0-9a-f]{64}$")],
    category: Annotated[str, Query()],
    k: Annotated[int, Query()] = 10,
    explain: Annotated[bool, Query()] = False,
) -> Response:
    return Response(BODY, media_type="application/json")


app = framework_floor if os.environ.get("FLOOR_APP") == "fastapi" else http_floor
