"""End to end on real data: a few hundred real STL pairs through quickstart, then the HTTP API."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

import cli
from index.prior import PopularityPrior
from training.stl import STLData

N_PAIRS = 300


def _subset(stl_dir: Path, out: Path, n_pairs: int) -> list[dict[str, object]]:
    """A data dir with the first ``n_pairs`` pairs that have both images (images symlinked)."""
    data = STLData.load(stl_dir)
    pairs = data.pairs_with_images()[:n_pairs]
    (out / "images" / "scenes").mkdir(parents=True)
    (out / "images" / "products").mkdir(parents=True)
    rows: list[dict[str, object]] = [
        {"product": p.product, "scene": p.scene, "bbox": list(p.bbox)} for p in pairs
    ]
    (out / "fashion.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "fashion-cat.json").write_text((stl_dir / "fashion-cat.json").read_text())
    for p in pairs:
        for kind, sig in (("scenes", p.scene), ("products", p.product)):
            link = out / "images" / kind / f"{sig}.jpg"
            if not link.exists():
                os.symlink(stl_dir / "images" / kind / f"{sig}.jpg", link)
    return rows


@pytest.mark.e2e
def test_quickstart_pipeline_then_api(stl_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    rows = _subset(stl_dir, data_dir, N_PAIRS)
    assert len(rows) == N_PAIRS
    work, artifacts = tmp_path / "work", tmp_path / "artifacts"
    argv = [
        "quickstart",
        "--data",
        str(data_dir),
        "--work",
        str(work),
        "--artifacts",
        str(artifacts),
        "--epochs",
        "3",
        "--no-serve",
    ]
    assert cli.main(argv) == 0

    run_dir = work / "runs" / "quickstart"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and 0.0 <= metrics["best_val_auc"] <= 1.0
    assert metrics["train_pairs"] > metrics["val_pairs"] > 0
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert (artifacts / "index" / "CURRENT").is_file()

    # A second quickstart finds every step current and changes nothing.
    stamp = (artifacts / "index" / "CURRENT").read_text()
    mtime = (artifacts / "manifest.json").stat().st_mtime
    assert cli.main(argv) == 0
    assert (artifacts / "index" / "CURRENT").read_text() == stamp
    assert (artifacts / "manifest.json").stat().st_mtime == mtime

    # Evaluation on the run's own test split writes the paper's metrics.
    eval_dir = tmp_path / "eval"
    assert (
        cli.main(
            [
                "evaluate",
                "--run",
                str(run_dir),
                "--data",
                str(data_dir),
                "--out",
                str(eval_dir),
                "--split",
                "test",
            ]
        )
        == 0
    )
    ev = json.loads((eval_dir / "metrics.json").read_text())
    assert ev["n_pairs"] > 0 and 0.0 <= ev["auc"] <= 1.0

    # The service serves the artifacts: a real scene gets products of the asked category.
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    settings = Settings(artifacts_dir=artifacts, redis_url=None)
    category = manifest["categories"][0]
    scene = (data_dir / "images" / "scenes" / f"{rows[0]['scene']}.jpg").read_bytes()
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/complete-the-look",
            files={"image": ("s.jpg", io.BytesIO(scene), "image/jpeg")},
            data={"category": category, "k": "5"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        products = body["products"]
        assert 0 < len(products) <= 5
        assert all(p["category"] == category for p in products)
        # Ranked as exported: d* less the run's popularity prior (lambda log(1 + training pairs)).
        prior = PopularityPrior.from_artifacts(artifacts)
        assert prior is not None and manifest["prior"]["weight"] == prior.weight > 0
        bonus = prior.bonus([p["id"] for p in products])
        d = [p["d_star"] - float(b) for p, b in zip(products, bonus, strict=True)]
        assert d == sorted(d)
