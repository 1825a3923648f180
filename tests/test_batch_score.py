"""`ctl batch-score` on a local Ray: real scenes plus a corrupt file, results equal to what
POST /complete-the-look answers for the same scenes, the corrupt file in the errors output."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from broken_exif import broken_exif_photos
from conftest import STL_DIR
from PIL import Image
from service_support import (
    PER_CATEGORY,
    encode,
    post_scene,
    scene_files,
    serve,
    settings_for,
    tiny_artifacts,
)

from batch.score import main, read_inputs, run

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

SCENES = 24
K = 5


def tiny_artifacts_for_job() -> Path:
    if not (STL_DIR / "fashion.json").is_file():
        pytest.skip(f"real data not found at {STL_DIR}")
    return tiny_artifacts(STL_DIR)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_batch_job_matches_the_http_answers(local_ray: None, stl_dir: Path, tmp_path: Path) -> None:
    artifacts = tiny_artifacts(stl_dir)
    scenes = scene_files(stl_dir, SCENES, skip=100)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    listing = tmp_path / "scenes.txt"
    listing.write_text("\n".join([*map(str, scenes), corrupt.name]) + "\n")

    inputs = read_inputs(listing)
    assert len(inputs) == SCENES + 1 and inputs[-1]["scene"] == str(corrupt)
    report = run(inputs, artifacts, tmp_path / "out", k=K, actors=1, batch_size=8)

    errors = pq.read_table(tmp_path / "out" / "errors").to_pylist()
    assert [e["scene"] for e in errors] == [str(corrupt)] and "unreadable" in errors[0]["error"]
    rows = pq.read_table(tmp_path / "out" / "results").to_pylist()
    assert report["errors"] == 1 and report["rows"] == len(rows)

    with serve(settings_for(artifacts, stl_dir)) as client:
        categories = [c["name"] for c in client.get("/categories").json()["categories"]]
        assert len(rows) == SCENES * len(categories) * K
        by_key: dict[tuple[str, str], list[dict]] = {}
        for r in rows:
            by_key.setdefault((r["scene"], r["category"]), []).append(r)
        for path in scenes[:6]:
            for category in categories[:3]:
                answer = post_scene(client, path.read_bytes(), category, k=K).json()
                job = sorted(by_key[(str(path), category)], key=lambda r: r["rank"])
                assert [r["product"] for r in job] == [p["id"] for p in answer["products"]]
                for r, p in zip(job, answer["products"], strict=True):
                    for field in ("d_star", "d_global", "d_local"):
                        assert r[field] == pytest.approx(p[field], abs=1e-5)


def test_the_job_applies_the_service_limits_and_scores_broken_exif(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's files: broken-EXIF photos are scored (the EXIF ignored, never a failed
    job); a GIF named .jpg and a PNG over the pixel limit get error rows, as the service
    refuses them."""
    artifacts = tiny_artifacts_for_job()
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, data in broken_exif_photos().items():
        (photos / name).write_bytes(data)
    (photos / "gif.jpg").write_bytes(encode(Image.new("RGB", (8, 8)), "GIF"))
    (photos / "big.png").write_bytes(encode(Image.new("RGB", (300, 200)), "PNG"))
    monkeypatch.setenv("CTL_MAX_IMAGE_PIXELS", "50000")  # the service's setting, read by the job
    report = run(read_inputs(photos), artifacts, tmp_path / "out", k=2, actors=1)
    errors = {
        Path(e["scene"]).name: e["error"]
        for e in pq.read_table(tmp_path / "out" / "errors").to_pylist()
    }
    assert set(errors) == {"gif.jpg", "big.png"}, errors
    assert "unsupported image format GIF" in errors["gif.jpg"]
    assert "over the limit of 50000 pixels" in errors["big.png"]
    scored = {
        Path(r["scene"]).name for r in pq.read_table(tmp_path / "out" / "results").to_pylist()
    }
    assert scored == set(broken_exif_photos()) and report["errors"] == 2


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--k", "0"], "k must be between 1 and 100, got 0"),
        (["--k", "-3"], "k must be between 1 and 100, got -3"),
        (["--k", "101"], "k must be between 1 and 100, got 101"),
        (["--categories", "Nope"], "unknown categories 'Nope'; valid categories: "),
        (["--categories", "Shoes,,Pants"], "--categories has an empty name"),
    ],
)
def test_bad_options_exit_non_zero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    options: list[str], words: str,
) -> None:  # fmt: skip
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(encode(Image.new("RGB", (64, 48)), "JPEG"))
    argv = [str(photos), "--artifacts", str(tiny_artifacts_for_job()), "--out", str(tmp_path / "o")]
    with caplog.at_level(logging.ERROR):
        assert main([*argv, *options]) == 2
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and words in lines[0], lines
    assert "\n" not in lines[0] and capsys.readouterr().out == ""
    assert not (tmp_path / "o").exists()


def test_the_batch_job_applies_the_filter(stl_dir: Path, tmp_path: Path) -> None:
    """The actor's scoring with --filter gives what POST /complete-the-look gives with it."""
    import json

    import numpy as np

    from batch.score import SceneScorer, main

    artifacts = tiny_artifacts(stl_dir)
    (tmp_path / "results").mkdir()
    (tmp_path / "errors").mkdir()
    scenes = scene_files(stl_dir, 2, skip=140)
    with serve(settings_for(artifacts, stl_dir)) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        top = post_scene(client, scenes[0].read_bytes(), category, k=K).json()["products"]
        flt = json.dumps({"exclude": [top[0]["id"], top[2]["id"]]})
        want = [
            [p["id"] for p in post_scene(client, s.read_bytes(), category, k=K, filter=flt)
             .json()["products"]]
            for s in scenes
        ]  # fmt: skip
    limits = {"max_pixels": 40_000_000, "max_bytes": 20 * 1024 * 1024}
    scorer = SceneScorer(
        str(artifacts), str(tmp_path), [category], K, 1, "cpu", 4, **limits, filter_json=flt
    )
    batch = {"scene": np.array([str(s) for s in scenes]), "categories": np.array(["", ""])}
    assert scorer(batch)["rows"] == [2 * (PER_CATEGORY - 2)]  # 2 of each category's excluded
    rows = pq.read_table(tmp_path / "results").to_pylist()
    for scene, ids in zip(scenes, want, strict=True):
        job = sorted((r for r in rows if r["scene"] == str(scene)), key=lambda r: r["rank"])
        assert [r["product"] for r in job] == ids and top[0]["id"] not in ids
    assert main([str(scenes[0]), "--out", str(tmp_path / "o"), "--filter", '{"colour": 1}']) == 2
