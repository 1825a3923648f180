"""bench/bench_service.py at a small size: the phone-photo set and today's path run end to end
(a real server, real photos, the tiny model); the figures themselves come from real runs."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from service_support import tiny_artifacts

REPO = Path(__file__).resolve().parent.parent


def _bench() -> object:
    spec = importlib.util.spec_from_file_location(
        "bench_service", REPO / "bench" / "bench_service.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_phone_photo_bench_runs_at_a_small_size(
    stl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench()
    out = tmp_path / "bench.json"
    argv = [
        "--artifacts",
        str(tiny_artifacts(stl_dir)),
        "--scenes",
        str(stl_dir / "images" / "scenes"),
    ]
    argv += ["--clients", "1,2", "--miss-requests", "2", "--hit-requests", "4"]
    argv += ["--batch-sizes", "1,2", "--phone-requests", "2", "--phone-megapixels", "1"]
    argv += ["--today-batch-sizes", "1", "--out", str(out)]
    assert bench.main(argv) == 0  # type: ignore[attr-defined]
    result = json.loads(out.read_text())
    phone = {r["clients"]: r for r in result["rows"] if r["mode"] == "phone-miss"}
    assert sorted(phone) == [1, 2]
    assert all(r["requests"] == 2 and r["errors"] == 0 for r in phone.values())
    today = result["today"]
    assert sorted(today) == ["phone", "stl"]
    # A 1 MP photo decodes in full on today's path, at 1/2 scale in the service.
    assert today["phone"]["p50_ms_batch1"] > 0
    assert set(today["phone"]["best_images_per_s_before_level"]) == {"2"}
    printed = capsys.readouterr().out
    assert "phone photos, 1 client: miss p50" in printed
    assert "phone photos, 2 clients: misses" in printed
    assert "STL photos, 1 client: miss p50" in printed


def test_phone_photos_are_made_to_size(stl_dir: Path) -> None:
    bench = _bench()
    files = sorted((stl_dir / "images" / "scenes").glob("*.jpg"))[:2]
    photos = bench.phone_photos(files, 2.0)  # type: ignore[attr-defined]
    for f, data in zip(files, photos, strict=True):
        with Image.open(io.BytesIO(data)) as im, Image.open(f) as orig:
            assert im.format == "JPEG"
            assert abs(im.width * im.height - 2e6) < 0.01 * 2e6
            assert abs(im.width / im.height - orig.width / orig.height) < 0.01
