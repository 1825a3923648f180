"""``ctl serve``: run the HTTP service under uvicorn on the configured artifacts.

``--workers N`` (N > 1) runs N uvicorn worker processes on one port. Each builds its app from
the ``CTL_*`` environment (the flags are put there first) and follows new catalog versions
itself (service/follow.py); their Prometheus metrics are merged through a fresh
``PROMETHEUS_MULTIPROC_DIR`` (unless one is set already), removed at exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from index.config import IndexOptions
from runtime.options import option
from service.config import Settings
from service.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory under ``--workers N``)."""
    from service.app import create_app

    return create_app(Settings())


class ServeOptions(IndexOptions, prog="ctl serve", settings=Settings, summary=__doc__):
    """``ctl serve``'s flags; the service's other settings come from ``CTL_*`` alone."""

    host: str = option(help="bind address", setting="host")
    port: int = option(help="TCP port", setting="port")
    log_level: str = option(help="logging level", setting="log_level")
    workers: int = option(1, "worker processes on the port; metrics are merged across them", ge=1)


def main(argv: list[str]) -> int:
    """Parse the flags (defaults from ``CTL_*``), build the app and serve until interrupted."""
    settings = Settings()
    args = ServeOptions.parse(argv, settings)

    import uvicorn

    from service.app import create_app

    settings = settings.model_copy(
        update={"artifacts_dir": args.artifacts, "host": args.host, "port": args.port}
    )
    logging.getLogger().setLevel(args.log_level.upper())
    log.info(
        "serving %s on http://%s:%d (%d worker%s)",
        settings.artifacts_dir,
        settings.host,
        settings.port,
        args.workers,
        "s" if args.workers > 1 else "",
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": args.log_level.lower(),
        "access_log": False,
        # Nothing reads the client address (no access log), so X-Forwarded-* need no parsing,
        # and the Server header only tells clients what runs here.
        "proxy_headers": False,
        "server_header": False,
    }
    if args.workers == 1:
        uvicorn.run(create_app(settings), **options)
        return 0
    # The workers are new processes: they read their settings, and prometheus_client its
    # multi-process directory, from the environment.
    os.environ.update(
        CTL_ARTIFACTS_DIR=str(settings.artifacts_dir),
        CTL_HOST=settings.host,
        CTL_PORT=str(settings.port),
    )
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="ctl-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    log.info("metrics of the %d workers merged through %s", args.workers, os.environ[MULTIPROC_ENV])
    try:
        uvicorn.run("service.main:worker_app", factory=True, workers=args.workers, **options)
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0
