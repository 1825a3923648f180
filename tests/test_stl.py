"""Reading STL data in its released formats from a small directory made here."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from PIL import Image

from index.catalog import read_categories
from training.stl import Pair, STLData, load_pairs


def write_stl_dir(
    root: Path,
    pair_lines: Sequence[str],
    categories: Mapping[str, str],
    scenes: Mapping[str, tuple[int, int]],
    products: Mapping[str, tuple[int, int]],
    domain: str = "fashion",
) -> Path:
    """An STL data directory: raw pair lines, category paths, and JPEGs of the given sizes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{domain}.json").write_text("\n".join(pair_lines) + "\n", encoding="utf-8")
    (root / f"{domain}-cat.json").write_text(json.dumps(dict(categories)), encoding="utf-8")
    for kind, sizes in (("scenes", scenes), ("products", products)):
        folder = root / "images" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for sig, size in sizes.items():
            Image.new("RGB", size, (120, 90, 60)).save(folder / f"{sig}.jpg", "JPEG")
    return root


def pair_line(scene: str, product: str, bbox: Sequence[float]) -> str:
    return json.dumps({"product": product, "scene": scene, "bbox": list(bbox)})


def test_leaf_category(tmp_path: Path) -> None:
    paths = {"a": "Apparel & Accessories|Clothing|Pants", "b": "Apparel|Shoes ", "c": "Shoes"}
    (tmp_path / "fashion-cat.json").write_text(json.dumps(paths), encoding="utf-8")
    assert read_categories(tmp_path) == {"a": "Pants", "b": "Shoes", "c": "Shoes"}


def test_load_pairs_skips_malformed_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "fashion.json"
    lines = [
        pair_line("s1", "p1", [0.1, 0.2, 0.3, 0.4]),
        "not json",
        "",
        json.dumps({"product": "p2", "scene": "s2"}),  # no bbox
        json.dumps({"product": "p3", "scene": "s3", "bbox": [0.1, 0.2, 0.3]}),
        json.dumps({"product": "p4", "scene": "s4", "bbox": ["a", 0.2, 0.3, 0.4]}),
        json.dumps({"product": "p5", "scene": "s5", "bbox": 7}),
        json.dumps(["s6", "p6"]),
        pair_line("s7", "p7", [0, 0, 1, 1]),
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(path)
    assert pairs == [
        Pair("s1", "p1", (0.1, 0.2, 0.3, 0.4)),
        Pair("s7", "p7", (0.0, 0.0, 1.0, 1.0)),
    ]
    assert "6 malformed lines skipped" in caplog.text
    assert f"{path}:2:" in caplog.text


def test_load_categories_keeps_the_leaf(tmp_path: Path) -> None:
    path = tmp_path / "home-cat.json"
    path.write_text(json.dumps({"p1": "A|B|Pants", "p2": "A|Shoes"}), encoding="utf-8")
    assert read_categories(tmp_path, "home") == {"p1": "Pants", "p2": "Shoes"}


def test_load_categories_rejects_a_list(tmp_path: Path) -> None:
    (tmp_path / "fashion-cat.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_categories(tmp_path)


def test_load_names_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "fashion.json").write_text("", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"fashion-cat\.json not found"):
        STLData.load(tmp_path)


def test_data_dir_paths_and_pairs_with_images(tmp_path: Path) -> None:
    root = write_stl_dir(
        tmp_path / "data",
        [
            pair_line("s1", "p1", [0.1, 0.5, 0.4, 0.9]),  # both images, categorized
            pair_line("s1", "p2", [0.5, 0.5, 0.9, 0.9]),  # both images, categorized
            pair_line("s2", "p1", [0.1, 0.1, 0.4, 0.4]),  # scene image missing
            pair_line("s1", "p3", [0.1, 0.1, 0.4, 0.4]),  # product image missing
            pair_line("s1", "p4", [0.1, 0.1, 0.4, 0.4]),  # product has no category
        ],
        {"p1": "A|Shoes", "p2": "A|Clothing|Dresses", "p3": "A|Pants"},
        scenes={"s1": (40, 60)},
        products={"p1": (10, 10), "p2": (10, 10), "p4": (10, 10)},
    )
    data = STLData.load(root)
    assert len(data.pairs) == 5
    assert data.categories == {"p1": "Shoes", "p2": "Dresses", "p3": "Pants"}
    assert data.scene_path("s1") == root / "images" / "scenes" / "s1.jpg"
    assert data.product_path("p1") == root / "images" / "products" / "p1.jpg"
    assert data.available_scenes() == {"s1"}
    assert data.available_products() == ["p1", "p2"]
    assert [(p.scene, p.product) for p in data.pairs_with_images()] == [("s1", "p1"), ("s1", "p2")]
    assert data.category("p4") is None
    assert data.category_names() == ["Pants", "Shoes"]


def test_other_domain_and_no_images(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    (root / "home.json").write_text(pair_line("s", "p", [0, 0, 0.5, 0.5]), encoding="utf-8")
    (root / "home-cat.json").write_text(json.dumps({"p": "Home|Lamps"}), encoding="utf-8")
    data = STLData.load(root, "home")
    assert data.domain == "home" and data.categories == {"p": "Lamps"}
    assert data.available_scenes() == set() and data.available_products() == []
    assert data.pairs_with_images() == []
