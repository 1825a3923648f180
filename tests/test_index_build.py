"""index/build.py and index/cli.py: building from real images, bad images, add/remove, the CLI."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from factories import (
    FakeEncoder,
    make_catalog_subset,
    make_image_catalog,
    make_tiny_run,
    real_categories,
)
from PIL import Image

from index.build import BuildError, NewProduct, add_products, build_index, remove_products
from index.cli import add_main, build_main, info_main, remove_main
from index.store import IndexStore, UnknownProductError

CATS = ["Shoes", "Pants"]


class CountingEncoder(FakeEncoder):
    """Counts the product images it embeds."""

    embedded = 0

    def embed_products(self, images: Sequence[Image.Image]) -> np.ndarray:
        self.embedded += len(images)
        return super().embed_products(images)


def test_build_from_real_images_skips_and_lists_bad_ones(stl_dir: Path, tmp_path: Path) -> None:
    data = make_catalog_subset(stl_dir, tmp_path / "data", per_category=2)
    products = data / "images" / "products"
    (products / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (products / "empty.jpg").write_bytes(b"")
    (products / "nocat.jpg").write_bytes(next(products.glob("*.jpg")).read_bytes())
    cats = json.loads((data / "fashion-cat.json").read_text())
    cats.update({"corrupt": "A|Shoes", "empty": "A|Pants", "dress": "A|Dresses"})
    (data / "fashion-cat.json").write_text(json.dumps(cats))
    Image.new("RGB", (10, 10)).save(products / "dress.jpg")

    store = IndexStore(tmp_path / "artifacts" / "index")
    report = build_index(store, FakeEncoder(real_categories(stl_dir)), data)
    assert set(report.skipped) == {"corrupt", "empty", "nocat", "dress"}
    assert report.skipped["corrupt"].startswith("corrupt")
    assert report.skipped["empty"].startswith("corrupt")
    assert "no category" in report.skipped["nocat"]
    assert "Dresses" in report.skipped["dress"]
    assert report.to_dict()["skipped"] == 4
    assert set(report.counts.values()) == {2} and len(report.counts) == len(
        real_categories(stl_dir)
    )

    catalog = store.load()
    assert catalog.version == report.version == store.current()
    pid = catalog.category("Shoes").ids[0]
    assert catalog.product(pid).category == "Shoes"  # type: ignore[union-attr]
    assert catalog.product(pid).image.read_bytes() == (products / f"{pid}.jpg").read_bytes()  # type: ignore[union-attr]


@pytest.fixture()
def built(tmp_path: Path) -> tuple[IndexStore, CountingEncoder]:
    encoder = CountingEncoder(CATS)
    store = IndexStore(tmp_path / "artifacts" / "index")
    build_index(store, encoder, make_image_catalog(tmp_path / "data", {"Shoes": 8, "Pants": 5}))
    encoder.embedded = 0
    return store, encoder


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 30), color).save(buf, "PNG")
    return buf.getvalue()


def test_add_and_remove_reembed_nothing_else(
    built: tuple[IndexStore, CountingEncoder], tmp_path: Path
) -> None:
    store, encoder = built
    before = store.load()
    old_ids = [pid for c in before.categories for pid in before.category(c).ids]
    old_emb = before.embeddings(old_ids)
    jpg = tmp_path / "new-shoe.jpg"
    Image.new("RGB", (30, 30), (10, 200, 30)).save(jpg)

    report = add_products(
        store,
        encoder,
        [
            NewProduct("new-shoe", "Shoes", jpg),
            NewProduct("new-pants", "Pants", _png((200, 0, 0))),
            NewProduct("broken", "Pants", b"nope"),
        ],
    )
    assert encoder.embedded == 2
    assert report.skipped.keys() == {"broken"}
    after = store.load()
    assert after.version == report.version != before.version
    assert (after.count("Shoes"), after.count("Pants")) == (9, 6)
    np.testing.assert_array_equal(after.embeddings(old_ids), old_emb)
    assert Image.open(after.product("new-pants").image).format == "JPEG"  # type: ignore[union-attr]
    assert after.product("new-shoe").image.read_bytes() == jpg.read_bytes()  # type: ignore[union-attr]

    with pytest.raises(BuildError, match="already in the index"):
        add_products(store, encoder, [NewProduct("new-shoe", "Shoes", jpg)])
    with pytest.raises(BuildError, match="unknown categories"):
        add_products(store, encoder, [NewProduct("x", "Hats", jpg)])

    removed = remove_products(store, encoder, ["new-shoe", old_ids[0]])
    assert encoder.embedded == 2
    final = store.load()
    assert final.version == removed.version
    assert final.product("new-shoe") is None and final.product(old_ids[0]) is None
    assert len(final) == len(after) - 2
    np.testing.assert_array_equal(final.embeddings(old_ids[1:]), old_emb[1:])
    assert store.load(after.version).product("new-shoe") is not None  # older versions intact
    with pytest.raises(UnknownProductError, match="missing"):
        remove_products(store, encoder, ["missing"])


def test_another_model_cannot_extend_the_index(built: tuple[IndexStore, CountingEncoder]) -> None:
    store, _ = built
    other = FakeEncoder(CATS, version="fake-2")
    with pytest.raises(BuildError, match="rebuild"):
        remove_products(store, other, [store.load().category(CATS[0]).ids[0]])


def test_cli(stl_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model.export import export_run

    artifacts = tmp_path / "artifacts"
    export_run(make_tiny_run(tmp_path / "run", real_categories(stl_dir)), artifacts)
    data = make_catalog_subset(stl_dir, tmp_path / "data", per_category=2)
    common = ["--artifacts", str(artifacts), "--device", "cpu"]
    work = ["--work-dir", str(tmp_path / "work")]
    assert build_main([*common, *work, "--data", str(data)]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["products"] == 2 * len(real_categories(stl_dir))

    extra = tmp_path / "extra"
    extra.mkdir()
    Image.new("RGB", (40, 40), (0, 0, 255)).save(extra / "blue-bag.png")
    assert add_main([*common, "--images", str(extra), "--category", "Skirts"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["Skirts"] == 3
    assert remove_main([*common, "blue-bag"]) == 0
    capsys.readouterr()
    assert remove_main([*common, "blue-bag"]) == 1
    assert "unknown product ids: ['blue-bag']" in capsys.readouterr().err

    assert info_main(["--artifacts", str(artifacts)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["current"] == info["versions"][-1]["version"]
    assert info["versions"][-1]["products"] == built["products"]
    assert add_main([*common, "--images", str(extra), "--category", "Hats"]) == 1
    assert "unknown categories ['Hats']" in capsys.readouterr().err
