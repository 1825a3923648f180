"""`ctl batch-score` on a local Ray: real scenes plus a corrupt file, results equal to what
POST /complete-the-look answers for the same scenes, the corrupt file in the errors output."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from service_support import post_scene, scene_files, serve, settings_for, tiny_artifacts

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
