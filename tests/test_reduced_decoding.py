"""Reduced-size JPEG decoding: one decoder gives every path the same pixels, and the STL
photos (all under twice the model input) decode exactly as in full."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_features import make_data

from batch.score import decode_scene
from index.build import load_image
from model.backbones import build_backbone
from runtime.decode import DRAFT_MARGIN, decode_image
from service.images import Upload, decode_upload
from training.features import build_cache, compute_features
from training.stl import rgb

MAX_PIXELS = 40_000_000


def _big_jpeg(path: Path, size: tuple[int, int], orientation: int) -> bytes:
    """A photo-like JPEG (smooth gradients and noise) stored sideways with an EXIF tag."""
    w, h = size
    rng = np.random.default_rng(3)
    x = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.3, 1, h)[:, None, None]
    pixels = np.clip(x + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_service_batch_job_index_and_feature_cache_decode_the_same_pixels(tmp_path: Path) -> None:
    data = make_data(tmp_path / "data")
    backbone = build_backbone("tiny")
    size = backbone.spec.size
    path = data.product_path("p0")
    raw = _big_jpeg(path, (8 * size + 40, 5 * size), orientation=6)

    service = decode_upload(Upload("p0.jpg", raw, ""), MAX_PIXELS, size)
    batch = decode_scene(path, size, MAX_PIXELS, 10**9)
    index = load_image(path, min_size=size)
    assert not isinstance(batch, str) and not isinstance(index, str)
    full = decode_image(raw)
    # Upright (EXIF 6 turns it), and decoded at 1/2 scale: 1/4 would put 5 * size / 4 under
    # twice the model input.
    assert full.size == (5 * size, 8 * size + 40)
    assert service.size == (full.width // 2, full.height // 2)
    assert min(service.size) >= DRAFT_MARGIN * size
    for other in (batch, index.image, rgb(path, size)):
        np.testing.assert_array_equal(np.asarray(other), np.asarray(service))

    cache, _ = build_cache(data, backbone, tmp_path / "cache")
    row = cache.products.index("p0")
    cached = np.asarray(cache.array("product_global", "orig")[row], np.float32)
    want, _ = compute_features(backbone, [service])
    np.testing.assert_allclose(cached, want[0], rtol=1e-2, atol=1e-3)
    from_full, _ = compute_features(backbone, [full])
    assert not np.allclose(cached, from_full[0], rtol=1e-4, atol=1e-5)


def test_stl_photos_decode_identically_with_the_reduced_path(stl_dir: Path) -> None:
    """Every STL photo is under twice the model input on a side: the draft path leaves it as
    it is, so the feature cache (and val AUC) cannot change. A sample here; the whole set was
    checked once (docs/performance.md)."""
    photos = sorted((stl_dir / "images" / "scenes").glob("*.jpg"))[:20]
    photos += sorted((stl_dir / "images" / "products").glob("*.jpg"))[:20]
    if not photos:
        pytest.skip("no STL photos")
    for p in photos:
        raw = p.read_bytes()
        np.testing.assert_array_equal(
            np.asarray(decode_image(raw, min_size=224)), decode_image(raw)
        )
