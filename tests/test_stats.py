"""``ctl data stats`` on a small synthetic data directory with one pair for each outcome."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from test_stl import pair_line, write_stl_dir

from training.crop import image_size
from training.stats import compute_stats, main, render
from training.stl import STLData


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = write_stl_dir(
        tmp_path / "data",
        [
            pair_line("s1", "shoe", [0.3, 0.5, 0.7, 0.9]),  # kept: above (0,0,100,90)
            pair_line("s1", "pants", [0.4, 0.0, 0.6, 1.0]),  # full height: crop_too_small
            pair_line("s1", "dress", [0.3, 0.5, 0.7, 0.9]),  # dress
            pair_line("s2", "shoe", [0.3, 0.5, 0.7, 0.9]),  # scene file is not an image
            pair_line("s3", "shoe", [0.8, 0.1, 0.2, 0.5]),  # bbox_inverted
            pair_line("s4", "shoe", [0.3, 0.5, 0.7, 0.9]),  # no scene image
            pair_line("s1", "nocat", [0.3, 0.5, 0.7, 0.9]),  # product without a category
            "{broken",
        ],
        {
            "shoe": "A|Shoes",
            "pants": "A|Clothing|Pants",
            "dress": "A|Clothing|Dresses",
            "shirt": "A|Clothing|Shirts & Tops",
        },
        scenes={"s1": (100, 200), "s2": (10, 10), "s3": (8, 8)},
        products={p: (12, 12) for p in ("shoe", "pants", "dress", "nocat", "shirt")},
    )
    (root / "images" / "scenes" / "s2.jpg").write_bytes(b"not a jpeg")
    return root


def test_compute_stats(data_dir: Path) -> None:
    stats = compute_stats(STLData.load(data_dir)).as_dict()
    cats = stats.pop("categories")
    assert stats == {
        "data": str(data_dir),
        "domain": "fashion",
        "pairs": 7,
        "scenes": 4,
        "scenes_with_image": 3,
        "products": 4,
        "products_with_image": 3,  # nocat has a file but no category
        "pairs_with_images": 5,
        "catalog_products_with_images": 4,
        "scene_images_on_disk": 3,
        "crop": {
            "kept": 1,
            "dropped": {
                "bbox_inverted": 1,
                "crop_too_small": 1,
                "dress": 1,
                "unreadable_scene": 1,
            },
        },
    }
    row = ("pairs", "pairs_with_images", "crop_kept", "catalog_with_images")
    assert cats == {
        "Shoes": dict(zip(row, (4, 3, 1, 1), strict=True)),
        "Dresses": dict(zip(row, (1, 1, 0, 1), strict=True)),
        "Pants": dict(zip(row, (1, 1, 0, 1), strict=True)),
        "(no category)": dict(zip(row, (1, 0, 0, 0), strict=True)),
        "Shirts & Tops": dict(zip(row, (0, 0, 0, 1), strict=True)),
    }
    assert next(iter(cats)) == "Shoes"  # most pairs with images first


def test_home_domain_uses_home_crops(tmp_path: Path) -> None:
    # A full-height box is dropped in fashion but cropped left/right in home.
    line = pair_line("s", "lamp", [0.4, 0.0, 0.6, 1.0])
    cats = {"lamp": "Home|Lamps"}
    scenes, products = {"s": (100, 100)}, {"lamp": (12, 12)}
    home = write_stl_dir(tmp_path / "h", [line], cats, scenes, products, domain="home")
    assert compute_stats(STLData.load(home, "home")).crop.kept == 1
    fashion = write_stl_dir(tmp_path / "f", [line], cats, scenes, products)
    assert compute_stats(STLData.load(fashion)).crop.dropped == {"crop_too_small": 1}


def test_image_size_reads_the_header_only(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.effect_noise((64, 48), 50).convert("RGB").save(buf, "JPEG")  # ~2 kB, header < 700 B
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(buf.getvalue()[:1000])  # pixels cut off, header intact
    with Image.open(truncated) as img, pytest.raises(OSError, match="truncated"):
        img.load()
    assert image_size(truncated) == (64, 48)
    garbage = tmp_path / "g.jpg"
    garbage.write_bytes(b"nope")
    assert image_size(garbage) is None
    assert image_size(tmp_path / "missing.jpg") is None


def test_main_table_and_json(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data", str(data_dir)]) == 0
    table = capsys.readouterr().out
    assert table == render(compute_stats(STLData.load(data_dir))) + "\n"
    assert "pairs with both images                   5" in table
    assert "crop (pairs with both images): kept 1 of 5" in table
    assert "  dropped unreadable_scene: 1" in table
    assert main(["--data", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == compute_stats(STLData.load(data_dir)).as_dict()


def test_main_on_a_non_data_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--data", str(tmp_path)]) == 2
    assert "fashion.json not found" in caplog.text
