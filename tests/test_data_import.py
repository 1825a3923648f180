"""``ctl data import``: good and bad rows of a shop's tables, then a synthetic shop through
``ctl quickstart``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from factories import folder_server
from PIL import Image

import cli
from training.stl import STLData


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server of the folder it yields (404 for what is not there)."""
    root = tmp_path / "web"
    root.mkdir()
    with folder_server(root) as url:
        yield url, root


def image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def errors(out: Path) -> dict[tuple[str, int], str]:
    lines = (out / "import-errors.jsonl").read_text().splitlines()
    return {(e["table"], e["line"]): e["reason"] for e in map(json.loads, lines)}


def test_good_and_bad_rows(
    tmp_path: Path, web: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, served = web
    shop = tmp_path / "shop"
    image(shop / "scenes" / "a.jpg", (60, 90), (200, 30, 30))
    image(shop / "scenes" / "b.png", (100, 100), (30, 200, 30))  # stored as JPEG
    image(served / "c.jpg", (80, 120), (30, 30, 200))
    (shop / "scenes" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    image(shop / "products" / "p1.jpg", (40, 40), (10, 10, 10))
    image(served / "p2.webp", (40, 40), (20, 20, 20))
    (shop / "products" / "broken.jpg").write_bytes(b"GIF89a")
    looks = shop / "looks.csv"
    looks.write_text(
        "scene,product,bbox,width,height\n"
        'scenes/a.jpg,p1,"0.2,0.5,0.8,0.95",,\n'  # 2: good, in [0, 1]
        'scenes/b.png,p2,"20,60,80,95",100,100\n'  # 3: good, pixels with the size
        f'{url}/c.jpg,p1,"[0.1, 0.6, 0.9, 0.9]",,\n'  # 4: good, fetched over HTTP
        'scenes/a.jpg,p2,"10,50,50,85",60,90\n'  # 5: good, pixels
        'scenes/a.jpg,p2,"0.2,0.5,1.2,0.9",,\n'  # 6: outside the image
        'scenes/a.jpg,p2,"0.5,0.5,0.5,0.9",,\n'  # 7: zero area
        'scenes/a.jpg,nope,"0.1,0.1,0.5,0.5",,\n'  # 8: unknown product
        'scenes/broken.jpg,p1,"0.1,0.1,0.5,0.5",,\n'  # 9: unreadable image
        'scenes/missing.jpg,p1,"0.1,0.1,0.5,0.5",,\n'  # 10: no such file
        'scenes/a.jpg,p1,"10,10,70,80",60,90\n'  # 11: pixels past the 60 px wide image
        'scenes/a.jpg,p1,"1,2,3",,\n'  # 12: three numbers
        f'{url}/gone.jpg,p1,"0.1,0.1,0.5,0.5",,\n'  # 13: HTTP 404
        'scenes/a.jpg,p3,"0.1,0.1,0.5,0.5",,\n'  # 14: the product's image is broken
        "scenes/a.jpg,p1\n"  # 15: too few fields
        'ftp://host/x.jpg,p1,"0.1,0.1,0.5,0.5",,\n'  # 16: not a path or http(s) URL
        'scenes/b.png,p1,"0,0,50,50",0,100\n'  # 17: a size of zero
    )
    products = shop / "products.jsonl"
    products.write_text(
        '{"id": "p1", "category": "Shoes", "image": "products/p1.jpg"}\n'
        f'{{"id": "p2", "category": "Apparel|Pants", "image": "{url}/p2.webp"}}\n'
        '{"id": "p3", "category": "Shoes", "image": "products/broken.jpg"}\n'
        '{"id": "../evil", "category": "Shoes", "image": "products/p1.jpg"}\n'
        '{"id": "p1", "category": "Pants", "image": "products/p1.jpg"}\n'
        '{"id": "p5", "category": \n'
        '{"id": "p4", "category": "Shoes"}\n'
    )
    out = tmp_path / "data"
    argv = ["data", "import", "--looks", str(looks), "--products", str(products)]
    argv += ["--out", str(out), "--retries", "1", "--backoff", "0", "--timeout", "5"]
    assert cli.main(argv) == 0

    got = errors(out)
    expected = {
        ("looks", 6): "outside the image",
        ("looks", 7): "zero area",
        ("looks", 8): "unknown product 'nope'",
        ("looks", 9): "unreadable scene image: not_an_image",
        ("looks", 10): "unreadable scene image: no_such_file",
        ("looks", 11): "outside the image",
        ("looks", 12): "not four numbers",
        ("looks", 13): "unreadable scene image: http_404",
        ("looks", 14): "product p3's image is unreadable",
        ("looks", 15): "expected 5 fields, got 2",
        ("looks", 16): "neither a file path nor an http(s) URL",
        ("looks", 17): "must both be positive numbers",
        ("products", 3): "unreadable image: not_an_image",
        ("products", 4): "product id '../evil' is not",
        ("products", 5): "duplicate product p1 (first on line 1)",
        ("products", 6): "malformed JSON",
        ("products", 7): "no value for image",
    }
    assert set(got) == set(expected)
    for key, reason in expected.items():
        assert reason in got[key], (key, got[key])
    summary = capsys.readouterr().out
    assert "import: 4 looks of 3 scenes, 2 products" in summary
    assert f"{looks}:6: box [0.2, 0.5, 1.2, 0.9] is outside the image" in summary

    data = STLData.load(out)
    assert data.categories == {"p1": "Shoes", "p2": "Pants"}
    boxes = [(p.product, p.bbox) for p in data.pairs]
    assert boxes[0] == ("p1", (0.2, 0.5, 0.8, 0.95))
    assert boxes[1] == ("p2", (0.2, 0.6, 0.8, 0.95))
    assert boxes[2] == ("p1", (0.1, 0.6, 0.9, 0.9))
    assert boxes[3][1] == pytest.approx((10 / 60, 50 / 90, 50 / 60, 85 / 90), abs=1e-6)
    assert len(data.pairs_with_images()) == 4
    sources = json.loads((out / "scenes.json").read_text())
    assert sorted(sources.values()) == sorted(
        [(shop / "scenes" / "a.jpg").as_uri(), (shop / "scenes" / "b.png").as_uri(), f"{url}/c.jpg"]
    )
    for path in [*data.scene_dir.glob("*.jpg"), *data.product_dir.glob("*.jpg")]:
        with Image.open(path) as im:
            assert im.format == "JPEG", path  # the PNG scene and the WebP product too

    # What survives cropping, as ctl data stats reports it.
    assert cli.main(["data", "stats", "--data", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["pairs_with_images"] == 4 and stats["crop"]["kept"] == 4

    # A rerun fetches nothing again and writes the same directory.
    before = (out / "fashion.json").read_bytes()
    assert cli.main(argv) == 0
    assert "images: ok 0, skipped 5" in capsys.readouterr().out
    assert (out / "fashion.json").read_bytes() == before


def test_tables_that_cannot_be_read(tmp_path: Path) -> None:
    products = tmp_path / "products.csv"
    products.write_text("id,image\np1,p1.jpg\n")
    looks = tmp_path / "looks.csv"
    looks.write_text("scene,product,bbox\n")
    argv = ["data", "import", "--looks", str(looks), "--products", str(products)]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 2  # no category column
    products.write_text("id,category,image\n")
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 1  # nothing to import
    assert cli.main([*argv[:3], str(tmp_path / "nope.csv"), *argv[4:], "--out", "x"]) == 2


CATEGORIES = ("Shoes", "Pants", "Shirts & Tops")
REGIONS = {  # where each category sits in a scene: below the middle or above it
    "Shoes": (0.3, 0.78, 0.7, 0.97),
    "Pants": (0.25, 0.45, 0.75, 0.75),
    "Shirts & Tops": (0.2, 0.05, 0.8, 0.35),
}


def make_shop(root: Path, url: str, served: Path, n_scenes: int = 150) -> tuple[Path, Path]:
    """A shop: 60 products (colored patterns, served over HTTP) and ``n_scenes`` photos, each
    a person of two products, as Parquet looks with pixel boxes and a CSV catalog."""
    rng = np.random.default_rng(0)
    colors = {}
    rows = ["id,category,image"]
    for c, category in enumerate(CATEGORIES):
        for j in range(20):
            pid = f"c{c}-{j:02d}"
            colors[pid] = rng.integers(0, 255, 3)
            patch = np.zeros((48, 48, 3), np.uint8) + colors[pid].astype(np.uint8)
            patch[::4] = 255 - patch[::4]  # stripes: a pattern, not a flat color
            Image.fromarray(patch).save(served / f"{pid}.png")
            rows.append(f'{pid},"Apparel|{category}",{url}/{pid}.png')
    products = root / "products.csv"
    root.mkdir(parents=True, exist_ok=True)
    products.write_text("\n".join(rows) + "\n")
    looks: dict[str, list[object]] = {"scene": [], "product": [], "bbox": []}
    looks |= {"width": [], "height": []}
    ids = list(colors)
    for i in range(n_scenes):
        w, h = 120, 180
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        a, b = rng.choice(3, 2, replace=False)
        for cat in (CATEGORIES[a], CATEGORIES[b]):
            pid = ids[CATEGORIES.index(cat) * 20 + int(rng.integers(20))]
            box = [round(v * s) for v, s in zip(REGIONS[cat], (w, h, w, h), strict=True)]
            pixels[box[1] : box[3], box[0] : box[2]] = colors[pid]
            looks["scene"].append(f"scenes/{i:03d}.jpg")
            looks["product"].append(pid)
            looks["bbox"].append(box)
            looks["width"].append(w)
            looks["height"].append(h)
        image_path = root / "scenes" / f"{i:03d}.jpg"
        image_path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(image_path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    looks_file = root / "looks.parquet"
    pq.write_table(pa.table(looks), looks_file)
    return looks_file, products


@pytest.mark.timeout(300)
def test_a_synthetic_shop_through_quickstart(tmp_path: Path, web: tuple[str, Path]) -> None:
    pytest.importorskip("pyarrow")
    url, served = web
    looks, products = make_shop(tmp_path / "shop", url, served)
    data = tmp_path / "data"
    argv = ["data", "import", "--looks", str(looks), "--products", str(products)]
    assert cli.main([*argv, "--out", str(data)]) == 0
    assert (data / "import-errors.jsonl").read_text() == ""
    stl = STLData.load(data)
    assert len(stl.pairs_with_images()) == 300 and len(stl.available_products()) == 60
    assert set(stl.category_names()) == set(CATEGORIES)

    work, artifacts = tmp_path / "work", tmp_path / "artifacts"
    quickstart = ["quickstart", "--data", str(data), "--work", str(work)]
    quickstart += ["--artifacts", str(artifacts), "--backbone", "tiny", "--epochs", "2"]
    assert cli.main([*quickstart, "--no-serve"]) == 0
    metrics = json.loads((work / "runs" / "quickstart" / "metrics.json").read_text())
    assert metrics["train_pairs"] > metrics["val_pairs"] > 0
    assert metrics["train_pairs"] + metrics["val_pairs"] + metrics["test_pairs"] == 300
    assert (artifacts / "index" / "CURRENT").is_file()
