"""`ctl batch-score` on a local Ray: real scenes plus a corrupt file, results equal to what
POST /complete-the-look answers for the same scenes, the corrupt file in the errors output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import (
    PER_CATEGORY,
    post_scene,
    scene_files,
    serve,
    settings_for,
    tiny_artifacts,
)

from index.batch_score import read_inputs, run

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

SCENES = 24
K = 5


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


def test_the_batch_job_applies_the_filter(stl_dir: Path, tmp_path: Path) -> None:
    """The actor's scoring with --filter gives what POST /complete-the-look gives with it."""
    import json

    import numpy as np

    from index.batch_score import SceneScorer, main

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
    scorer = SceneScorer(str(artifacts), str(tmp_path), [category], K, 1, "cpu", 4, flt)
    batch = {"scene": np.array([str(s) for s in scenes]), "categories": np.array(["", ""])}
    assert scorer(batch)["rows"] == [2 * (PER_CATEGORY - 2)]  # 2 of each category's excluded
    rows = pq.read_table(tmp_path / "results").to_pylist()
    for scene, ids in zip(scenes, want, strict=True):
        job = sorted((r for r in rows if r["scene"] == str(scene)), key=lambda r: r["rank"])
        assert [r["product"] for r in job] == ids and top[0]["id"] not in ids
    assert main([str(scenes[0]), "--out", str(tmp_path / "o"), "--filter", '{"colour": 1}']) == 2
