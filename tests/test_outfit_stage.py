"""The outfit stage end to end on a few dozen real outfits: composition cache, joint training,
FITB and composed-scene attention (the tiny backbone keeps it to seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_train import small_stl
from training.train import parse_options, train

OUTFITS_DIR = REPO.parent / "shared" / "mango-outfits"
N_OUTFITS = 60


def small_outfits(src: Path, dst: Path, categories: set[str], n: int = N_OUTFITS) -> Path:
    """The first ``n`` real outfits holding an item of ``categories`` (photos symlinked)."""
    with open(src / "products.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cat = {r["product"]: r["stl_category"] for r in rows}
    outfits: dict[str, list[str]] = {}
    with open(src / "outfits.csv", newline="") as f:
        for r in csv.DictReader(f):
            outfits.setdefault(r["outfit"], []).append(r["product"])
    chosen = [o for o, items in outfits.items() if any(cat[p] in categories for p in items)][:n]
    used = {p for o in chosen for p in outfits[o]}
    (dst / "images").mkdir(parents=True)
    for p in used:
        (dst / "images" / f"{p}.jpg").symlink_to(src / "images" / f"{p}.jpg")
    header = list(rows[0])
    with open(dst / "products.csv", "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(r for r in rows if r["product"] in used)
    lines = [f"{o},{p}" for o in chosen for p in outfits[o]]
    (dst / "outfits.csv").write_text("outfit,product\n" + "\n".join(lines) + "\n")
    return dst


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_outfit_stage_on_real_outfits(stl_dir: Path, tmp_path: Path) -> None:
    if not (OUTFITS_DIR / "outfits.csv").is_file():
        pytest.skip(f"real outfits not found at {OUTFITS_DIR}")
    data_dir = small_stl(stl_dir, tmp_path / "data")
    outfits = small_outfits(OUTFITS_DIR, tmp_path / "outfits", {"Shoes", "Pants"})
    base = [
        "--data", str(data_dir), "--cache", str(tmp_path / "cache"), "--backbone", "tiny",
        "--epochs", "2", "--eval-every", "1", "--batch-size", "16", "--outfits", str(outfits),
    ]  # fmt: skip
    joint = train(
        parse_options(
            [
                *base,
                "--out",
                str(tmp_path / "joint"),
                "--outfit-weight",
                "1",
                "--outfit-attention",
                "0.5",
            ]
        )
    )
    rep = joint["outfits"]
    assert rep["val"]["n"] > 0 and rep["test"]["n"] > 0
    assert 0.0 <= rep["val"]["fitb"] <= 1.0 and rep["val"]["fitb_random"] == 0.25
    assert 0.0 <= rep["val"]["attention_random_top1_hit"] <= rep["val"]["attention_random_top3_hit"]
    assert joint["seconds"]["outfit_features"] > 0
    meta_files = list((tmp_path / "cache").glob("outfits-tiny-*/meta.json"))
    assert len(meta_files) == 1
    meta = json.loads(meta_files[0].read_text())
    assert len(meta["examples"]) == N_OUTFITS
    assert all(len(e["boxes"]) == len(e["others"]) for e in meta["examples"])

    # The same STL stream without outfit batches (evaluation only) trains differently, and
    # reuses the composition cache.
    alone = train(parse_options([*base, "--out", str(tmp_path / "alone"), "--outfit-eval"]))
    assert alone["seconds"]["outfit_features"] == 0
    assert alone["outfits"]["val"]["n"] == rep["val"]["n"]
    assert [h["loss"] for h in alone["history"]] != [h["loss"] for h in joint["history"]]

    # Item pairs alone: the photos' cache without compositions, FITB product to product.
    items = train(
        parse_options([*base, "--out", str(tmp_path / "items"), "--item-pair-weight", "1"])
    )
    assert items["outfits"]["val"]["items"]["n"] > 0
    assert 0.0 <= items["outfits"]["val"]["items"]["fitb"] <= 1.0
    assert "fitb" not in items["outfits"]["val"]  # no composed scenes were made
    photos = [p for p in (tmp_path / "cache").glob("outfits-tiny-*") if p != meta_files[0].parent]
    assert len(photos) == 1 and not list(photos[0].glob("scene_global-*"))
    assert [h["loss"] for h in items["history"]] != [h["loss"] for h in alone["history"]]
    assert alone["outfits"]["val"]["items"]["n"] == items["outfits"]["val"]["items"]["n"]
    # Item pairs outnumber STL steps, so their queue runs across epochs: resuming continues it.
    flags = [*base, "--out", str(tmp_path / "part"), "--item-pair-weight", "1"]
    train(parse_options([*flags, "--epochs", "1"]))
    resumed = train(parse_options([*flags, "--resume"]))
    assert resumed["history"] == items["history"]

    # Absent outfits: one log line, STL alone.
    gone = parse_options(
        [
            *base,
            "--out",
            str(tmp_path / "gone"),
            "--outfit-weight",
            "1",
            "--outfits",
            str(tmp_path / "none"),
        ]
    )
    assert train(gone)["outfits"] == {}
    assert "no outfits at" in (tmp_path / "gone" / "train.log").read_text()
