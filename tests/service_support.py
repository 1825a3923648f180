"""Shared helpers of the service tests: one tiny real catalog per session, images, a client.

The catalog is built once (``factories.make_tiny_artifacts``: a tiny exported model and a few
real products per category from ``../shared/stl-fashion``); tests that change it work on a copy.
"""

from __future__ import annotations

import atexit
import io
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import Settings

ADMIN_TOKEN = "test-admin-token"
PER_CATEGORY = 5


@cache
def tiny_artifacts(stl_dir: Path) -> Path:
    """The session's tiny artifacts directory (built on first use, removed at exit)."""
    from factories import make_tiny_artifacts

    root = Path(tempfile.mkdtemp(prefix="ctl-service-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    make_tiny_artifacts(root / "artifacts", stl_dir, per_category=PER_CATEGORY)
    return root / "artifacts"


def copy_artifacts(stl_dir: Path, dest: Path) -> Path:
    """A private copy of the tiny artifacts for a test that publishes new versions."""
    return Path(shutil.copytree(tiny_artifacts(stl_dir), dest / "artifacts"))


def settings_for(artifacts: Path, stl_dir: Path, **overrides: Any) -> Settings:
    """Test settings: in-process cache unless overridden, the admin token, small limits."""
    values: dict[str, Any] = {
        "artifacts_dir": artifacts,
        "data_dir": stl_dir,
        "redis_url": None,
        "admin_token": ADMIN_TOKEN,
        "max_upload_bytes": 2_000_000,
        "max_image_pixels": 4_000_000,
        "samples_count": 3,
        **overrides,
    }
    return Settings(**values)


def free_port() -> int:
    """A loopback port nothing listens on (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread (one event loop, like
    production); yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def serve(settings: Settings, **factory_kwargs: Any) -> Iterator[TestClient]:
    """A TestClient with the lifespan on (models loaded, shut down at exit)."""
    with TestClient(create_app(settings, **factory_kwargs)) as client:
        yield client


def scene_files(stl_dir: Path, n: int, skip: int = 0) -> list[Path]:
    """``n`` real scene photos (``skip`` lets tests take disjoint sets)."""
    return sorted((stl_dir / "images" / "scenes").glob("*.jpg"))[skip : skip + n]


def scene(stl_dir: Path, n: int = 0) -> bytes:
    """The bytes of the ``n``-th real scene photo."""
    return scene_files(stl_dir, 1, skip=n)[0].read_bytes()


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def post_scene(client: TestClient, data: bytes, category: str, k: int = 3, **fields: str) -> Any:
    """POST /complete-the-look with one image."""
    return client.post(
        "/complete-the-look",
        files={"image": ("scene.jpg", data, "image/jpeg")},
        data={"category": category, "k": str(k), **fields},
    )


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
