"""Shared fixtures: where the real data is, and a real Redis when one answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STL_DIR = Path(os.environ.get("CTL_TEST_STL_DIR", REPO.parent / "shared" / "stl-fashion"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# OpenMP threads (torch, faiss) spin while they wait: on a busy 2-core machine that made tests
# 3-16x slower. It must be chosen before torch or faiss is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def stl_dir() -> Path:
    """The real STL-Fashion subset; CI always has it, elsewhere the test is skipped without it."""
    if not (STL_DIR / "fashion.json").is_file():
        if IN_CI:
            pytest.fail(f"{STL_DIR} is missing in CI")
        pytest.skip(f"real data not found at {STL_DIR}")
    return STL_DIR


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis at 127.0.0.1:6379 (.ci/run starts it); skipped outside CI without one."""
    url = os.environ.get("CTL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        import redis

        redis.Redis.from_url(url, socket_timeout=1).ping()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"Redis at {url} does not answer in CI: {exc}")
        pytest.skip(f"no Redis answers at {url}: {exc}")
    return url
