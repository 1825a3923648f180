"""``ctl serve``: flags override the CTL_ settings and reach uvicorn; nothing loads early."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import cli
from service.config import Settings


def test_serve_passes_flags_to_uvicorn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    seen: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        seen.update(kwargs, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("CTL_MAX_K", "7")
    rc = cli.main(["serve", "--artifacts", str(tmp_path), "--host", "0.0.0.0", "--port", "9123"])
    assert rc == 0
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 9123)
    assert (seen["proxy_headers"], seen["server_header"], seen["access_log"]) == (False,) * 3
    settings = seen["app"].state.settings
    assert settings.artifacts_dir == tmp_path and settings.max_k == 7
    assert not hasattr(seen["app"].state, "manager"), "models were loaded before the lifespan"


def test_serve_rejects_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--port", "eighty"])
    assert exc.value.code == 2
    assert "--port" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["encoder_lanes", "batch_max_size"])
def test_lanes_and_batch_size_cannot_be_negative(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: -1})  # type: ignore[arg-type]
    assert getattr(Settings(**{field: 0}), field) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("enabled", [False, True])
def test_fastapi_telemetry_follows_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, enabled: bool
) -> None:
    """With a provider configured, FastAPI's telemetry wraps requests only when asked to."""
    from fastapi.telemetry import _asgi
    from fastapi.testclient import TestClient
    from opentelemetry import trace

    from service.app import create_app

    monkeypatch.setattr(trace, "get_tracer_provider", trace.NoOpTracerProvider)
    wrapped: list[str] = []
    real = _asgi.NativeTelemetry.__call__

    async def spy(self: Any, **kwargs: Any) -> None:
        wrapped.append(kwargs["scope"]["path"])
        await real(self, **kwargs)

    monkeypatch.setattr(_asgi.NativeTelemetry, "__call__", spy)
    app = create_app(Settings(artifacts_dir=tmp_path, opentelemetry=enabled))
    assert TestClient(app).get("/healthz").status_code == 200
    assert wrapped == (["/healthz"] if enabled else [])


def test_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--workers", "0"])
    assert exc.value.code == 2 and "--workers" in capsys.readouterr().err


def _get(url: str) -> tuple[int, str]:
    """One request on a new connection (so the kernel may hand it to either worker)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def test_two_workers_serve_and_merge_their_metrics(stl_dir: Path) -> None:
    """``ctl serve --workers 2``: both workers answer, and /metrics from either counts all."""
    import os
    import re
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    from service_support import free_port, tiny_artifacts

    root = Path(__file__).resolve().parent.parent
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CTL_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(PYTHONPATH=str(root), CTL_DATA_DIR=str(stl_dir), CTL_ENCODER_LANES="1")
    args = [
        "serve",
        "--workers",
        "2",
        "--port",
        str(port),
        "--artifacts",
        str(tiny_artifacts(stl_dir)),
    ]
    proc = subprocess.Popen(
        [sys.executable, str(root / "cli.py"), *args], env=env, cwd=root, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 10:  # ten ready answers in a row: both workers have loaded
            assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
            ready = ready + 1 if _get(f"{base}/readyz")[0] == 200 else 0
            time.sleep(0.05 if ready else 0.5)
        workers = [
            int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        multiproc = Path(
            dict(
                line.split("=", 1)
                for line in Path(f"/proc/{workers[0]}/environ").read_text().split("\0")
                if "=" in line
            )["PROMETHEUS_MULTIPROC_DIR"]
        )
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: _get(f"{base}/healthz")[0], range(40)))
        assert statuses == [200] * 40
        counted = {
            int(m[1])
            for f in multiproc.iterdir()
            if (m := re.fullmatch(r"counter_(\d+)\.db", f.name))
        }
        assert len(counted) >= 2, f"only workers {counted} counted requests"

        def healthz_count() -> float:
            text = _get(f"{base}/metrics")[1]
            found = re.search(
                r'^ctl_http_requests_total\{endpoint="/healthz",method="GET",status="200"\} (\S+)$',
                text,
                re.M,
            )
            assert found, text[:2000]
            return float(found[1])

        # A worker counts a request after its answer is sent: on a busy machine the last
        # increments land a moment after the 40th answer, so wait for the count first.
        deadline = time.monotonic() + 30
        while (count := healthz_count()) != 40.0:
            assert count < 40.0 and time.monotonic() < deadline, f"/healthz counted {count}"
            time.sleep(0.05)
        # whichever worker answers, it reports every worker's count
        assert {healthz_count() for _ in range(6)} == {40.0}
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert not multiproc.exists(), "ctl serve left its metrics directory behind"
