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
