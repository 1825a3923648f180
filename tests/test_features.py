"""The feature cache: shapes, flipped views, keyed rebuilds and resuming after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.backbones import Tiny, build_backbone
from training import features
from training.features import build_cache, compute_features
from training.stl import STLData


def make_data(root: Path, n_scenes: int = 6, n_products: int = 8) -> STLData:
    """A synthetic STL directory: random images, products in two categories."""
    rng = np.random.default_rng(0)
    (root / "images" / "scenes").mkdir(parents=True)
    (root / "images" / "products").mkdir(parents=True)

    def save(path: Path, w: int, h: int) -> None:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)

    cats = {f"p{j}": "A|" + ("Shoes" if j % 2 else "Pants") for j in range(n_products)}
    lines = []
    for i in range(n_scenes):
        save(root / "images" / "scenes" / f"s{i}.jpg", 60, 90)
        lines.append(
            {"scene": f"s{i}", "product": f"p{i % n_products}", "bbox": [0.2, 0.6, 0.8, 0.9]}
        )
    lines.append({"scene": "s0", "product": "p1", "bbox": [0.1, 0.0, 0.9, 0.95]})  # crop too small
    for j in range(n_products):
        save(root / "images" / "products" / f"p{j}.jpg", 40, 40)
    (root / "fashion.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (root / "fashion-cat.json").write_text(json.dumps(cats))
    return STLData.load(root)


def test_cache_contents(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    bb = build_backbone("tiny")
    cache, spent = build_cache(data, bb, tmp_path / "cache")
    assert spent > 0
    assert len(cache.examples) == 6 and cache.meta["crop_stats"]["crop_too_small"] == 1
    g, r = cache.array("scene_global", "orig"), cache.array("scene_regions", "flip")
    assert g.shape == (6, bb.global_dim) and g.dtype == np.float16
    assert r.shape == (6, 49, bb.local_dim)
    assert cache.array("product_global", "flip").shape == (8, bb.global_dim)
    # The flipped view is the backbone on the mirrored image, not a copy.
    img = Image.open(data.product_path(cache.products[0]))
    ref, _ = compute_features(bb, [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], engine="torch")
    np.testing.assert_allclose(
        cache.array("product_global", "flip")[0], ref[0], rtol=1e-2, atol=1e-3
    )
    assert not np.allclose(cache.array("product_global", "orig")[0], ref[0], atol=1e-3)
    _, again = build_cache(data, bb, tmp_path / "cache")
    assert again == 0.0  # everything was cached


def test_backbone_change_rebuilds(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    first, _ = build_cache(data, Tiny(seed=0), tmp_path / "cache")
    second, spent = build_cache(data, Tiny(seed=1), tmp_path / "cache")  # other weights
    assert second.path != first.path and spent > 0
    assert not np.allclose(
        first.array("product_global", "orig"), second.array("product_global", "orig")
    )


def test_resumes_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_data(tmp_path / "data")
    monkeypatch.setattr(features, "CHUNK", 2)
    calls = {"n": 0}
    real = features.compute_features

    def flaky(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(features, "compute_features", flaky)
    bb = build_backbone("tiny")
    with pytest.raises(KeyboardInterrupt):
        build_cache(data, bb, tmp_path / "cache")
    progress = json.loads(next((tmp_path / "cache").glob("*/progress.json")).read_text())
    assert progress["scene_global-orig"]["chunks_done"] == 2
    calls["n"] = -100
    cache, _ = build_cache(data, bb, tmp_path / "cache")
    # 3 scene + 4 product chunks per view, two views; the first two scene chunks were kept.
    assert calls["n"] == -100 + 2 * (3 + 4) - 2
    ref, _ = compute_features(bb, [Image.open(data.product_path(cache.products[-1]))])
    np.testing.assert_allclose(
        cache.array("product_global", "orig")[-1], ref[0], rtol=1e-2, atol=1e-3
    )


def test_compute_features_engines_agree() -> None:
    bb = build_backbone("tiny")
    ims = [Image.new("RGB", (30 + 7 * i, 50), (40 * i, 90, 200)) for i in range(5)]
    g1, r1 = compute_features(bb, ims, batch_size=2, engine="torch")
    g2, r2 = compute_features(bb, ims, batch_size=3, engine="onnx")
    assert g1.shape == (5, bb.global_dim) and r1.shape == (5, 49, bb.local_dim)
    np.testing.assert_allclose(g1, g2, atol=1e-4)
    np.testing.assert_allclose(r1, r2, atol=1e-4)
    with pytest.raises(ValueError, match="unknown engine"):
        compute_features(bb, ims, engine="tpu")


def test_zoom_view_is_the_backbone_on_the_centre_crop(tmp_path: Path) -> None:
    img = Image.fromarray(np.arange(100 * 50 * 3, dtype=np.uint8).reshape(50, 100, 3))
    zoomed = features.VIEWS["zoom"].apply(img)
    assert zoomed.size == (90, 45)
    np.testing.assert_array_equal(np.asarray(zoomed), np.asarray(img)[2:47, 5:95])
    assert features.VIEWS["orig"].apply(img) is img
    data = make_data(tmp_path / "data")
    bb = build_backbone("tiny")
    cache, _ = build_cache(data, bb, tmp_path / "cache", views=("orig", "zoom"))
    prod = Image.open(data.product_path(cache.products[0])).convert("RGB")
    ref, _ = compute_features(bb, [features.VIEWS["zoom"].apply(prod)], engine="torch")
    np.testing.assert_allclose(
        cache.array("product_global", "zoom")[0], ref[0], rtol=1e-2, atol=1e-3
    )
    with pytest.raises(ValueError, match="unknown views"):
        build_cache(data, bb, tmp_path / "cache", views=("orig", "zoom2"))
