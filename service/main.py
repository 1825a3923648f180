"""``ctl serve``: run the HTTP service under uvicorn on the configured artifacts.

``--workers N`` (N > 1) runs N uvicorn worker processes on one port. Each builds its app from
the ``CTL_*`` environment (the flags are put there first) and follows new catalog versions
itself (service/follow.py); their Prometheus metrics are merged through a fresh
``PROMETHEUS_MULTIPROC_DIR`` (unless one is set already), removed at exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import Settings
from service.metrics import MULTIPROC_ENV

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory under ``--workers N``)."""
    from service.app import create_app

    return create_app(Settings())


def main(argv: list[str]) -> int:
    """Parse the flags (defaults from ``CTL_*``), build the app and serve until interrupted."""
    settings = Settings()
    parser = argparse.ArgumentParser(prog="ctl serve", description=__doc__)
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=settings.artifacts_dir,
        help="artifacts directory with the encoders and index/ (default: %(default)s)",
    )
    parser.add_argument("--host", default=settings.host, help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=settings.port, help="(default: %(default)s)")
    parser.add_argument("--log-level", default=settings.log_level, help="(default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on the port; metrics are merged across them (default: 1)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")

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
    options = {
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
