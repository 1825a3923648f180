"""The outfits loader on a tiny synthetic folder with bad rows and missing photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

import cli
from training.config import OUTFITS_ENV, TrainingSettings
from training.outfits import OutfitData

HEADER = "product,stl_category,category,aggregated_family,family,type,colour,fabric,sex,age,line\n"


def make_outfits(root: Path) -> Path:
    """5 good products (p5 without a photo), one malformed and one duplicate product row; outfits
    with an unknown product, a missing photo, a duplicate item, a bad row and a 1-item outfit."""
    (root / "images").mkdir(parents=True)
    rows = [
        "p1,Shoes,Shoes,Footwear,Shoes,Sneakers,WHITE,LEATHER,Female,Adult,SHE",
        "p2,Pants,Bottoms,Trousers,Trousers,Trousers,BLUE,DENIM,Female,Adult,SHE",
        "p3,,Dresses,Dresses,Dresses,Dress,RED,COTTON,Female,Adult,SHE",
        "p4,Shirts & Tops,Tops,Shirts,Shirt,Shirt,BLACK,SILK,Female,Adult,SHE",
        "p5,Earrings,Accessories,Jewellery,Earrings,Earrings,GOLD,METAL,Female,Adult,SHE",
        "broken,row",  # too few fields
        "p1,Shoes,Shoes,Footwear,Shoes,Sneakers,WHITE,LEATHER,Female,Adult,SHE",  # duplicate
    ]
    (root / "products.csv").write_text(HEADER + "\n".join(rows) + "\n")
    for pid in ("p1", "p2", "p3", "p4"):
        Image.new("RGB", (24, 32), (200, 10, 10)).save(root / "images" / f"{pid}.jpg")
    outfits = [
        "1,p1",
        "1,p2",
        "1,p3",
        "1,p1",  # duplicate item
        "1,zz",  # unknown product
        "2,p4",
        "2,p5",  # no photo: outfit 2 keeps one item and is dropped
        "3,p2",
        "3,p4",
        ",p1",  # no outfit id
    ]
    (root / "outfits.csv").write_text("outfit,product\n" + "\n".join(outfits) + "\n")
    return root


def test_loader_counts_problems_and_keeps_the_rest(tmp_path: Path) -> None:
    data = OutfitData.load(make_outfits(tmp_path / "o"))
    assert data.outfits == {"1": ["p1", "p2", "p3"], "3": ["p2", "p4"]}
    assert set(data.products) == {"p1", "p2", "p3", "p4"}
    assert data.products["p3"].stl_category == ""
    assert data.products["p4"].attributes["fabric"] == "SILK"
    assert data.problems == {
        "products_bad_rows": 1,
        "products_duplicate": 1,
        "products_missing_image": 1,
        "outfit_items_duplicate": 1,
        "outfit_items_unknown_product": 1,
        "outfit_items_missing_image": 1,
        "outfit_bad_rows": 1,
        "outfits_under_2_items": 1,
    }
    assert data.pairs() == 3 + 1


def test_split_is_by_outfit_and_seeded(tmp_path: Path) -> None:
    data = OutfitData.load(make_outfits(tmp_path / "o"))
    data.outfits = {str(i): ["p1", "p2"] for i in range(200)}
    a, b = data.split(seed=1), data.split(seed=1)
    assert a == b and set(a) == set(data.outfits)
    assert sum(v == "train" for v in a.values()) == 180
    assert a != data.split(seed=2)


def test_data_stats_outfits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_outfits(tmp_path / "o")
    assert cli.main(["data", "stats", "--outfits", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["outfits_kept"] == 2 and out["item_pairs"] == 4
    assert out["problems"]["outfit_items_missing_image"] == 1
    assert cli.main(["data", "stats", "--outfits", str(tmp_path / "nothing")]) == 2


def test_default_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OUTFITS_ENV, str(tmp_path))
    assert TrainingSettings().outfits_dir == tmp_path


def test_report_shows_held_out_outfits_only_when_measured() -> None:
    from training.evaluation.report import _outfit_lines

    assert _outfit_lines({}) == []
    m = {"n": 12, "fitb": 0.61, "attention_top1_hit": 0.9, "attention_random_top1_hit": 0.7}
    text = "\n".join(_outfit_lines({"val": m, "test": {"n": 0}}))
    assert "| val | 12 | 0.610 | 0.900 | 0.700 |" in text and "| test |" not in text
    items_only = {"val": {"items": {"n": 40, "fitb": 0.7, "fitb_random": 0.25}}}
    text = "\n".join(_outfit_lines(items_only))
    assert "composed scenes" not in text and "| val | 40 | 0.700 | 0.250 |" in text
