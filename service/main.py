"""``ctl serve``: run the HTTP service under uvicorn on the configured artifacts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from service.config import Settings

log = logging.getLogger(__name__)


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
    args = parser.parse_args(argv)

    import uvicorn

    from service.app import create_app

    settings = settings.model_copy(
        update={"artifacts_dir": args.artifacts, "host": args.host, "port": args.port}
    )
    logging.getLogger().setLevel(args.log_level.upper())
    log.info("serving %s on http://%s:%d", settings.artifacts_dir, settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level.lower(),
        access_log=False,
        # Nothing reads the client address (no access log), so X-Forwarded-* need no parsing,
        # and the Server header only tells clients what runs here: a few us off each request.
        proxy_headers=False,
        server_header=False,
    )
    return 0
