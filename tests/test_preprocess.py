"""The shared preprocessing: sizes, normalization, flips, padding, spec round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.preprocess import PreprocessSpec, resize_image, to_array, to_batch


def _gradient(w: int, h: int) -> Image.Image:
    x = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    return Image.fromarray(np.stack([x, x // 2, 255 - x], axis=-1), "RGB")


def test_normalization_is_minus_127_over_128() -> None:
    spec = PreprocessSpec(size=4)
    img = Image.new("RGB", (4, 4), (255, 127, 0))
    arr = to_array(img, spec)
    assert arr.shape == (3, 4, 4) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 0, 0], [(255 - 127) / 128, 0.0, -127 / 128])


def test_flip_mirrors_columns() -> None:
    spec = PreprocessSpec(size=16)
    img = _gradient(16, 16)
    np.testing.assert_array_equal(to_array(img, spec, flip=True), to_array(img, spec)[:, :, ::-1])


def test_pad_keeps_aspect_ratio_and_fills() -> None:
    spec = PreprocessSpec(size=20, resize="pad")
    out = resize_image(Image.new("RGB", (40, 10), (255, 0, 0)), spec)
    assert out.size == (20, 20)
    assert out.getpixel((10, 0)) == spec.fill  # padded band above
    assert out.getpixel((10, 10)) == (255, 0, 0)


def test_non_rgb_modes_become_three_channels() -> None:
    spec = PreprocessSpec(size=8)
    for mode in ("L", "RGBA", "P", "CMYK"):
        assert to_array(Image.new(mode, (5, 9)), spec).shape == (3, 8, 8)


def test_batch_shapes_including_empty() -> None:
    spec = PreprocessSpec(size=8)
    assert to_batch([_gradient(10, 5), _gradient(3, 30)], spec).shape == (2, 3, 8, 8)
    assert to_batch([], spec).shape == (0, 3, 8, 8)


def test_spec_round_trip_and_key(tmp_path: Path) -> None:
    spec = PreprocessSpec(size=96, resize="pad", mean=(1.0, 2.0, 3.0))
    spec.save(tmp_path / "p.json")
    loaded = PreprocessSpec.load(tmp_path / "p.json")
    assert loaded == spec and loaded.key() == spec.key()
    assert PreprocessSpec(size=97).key() != PreprocessSpec(size=96).key()


def test_unknown_resize_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="resize mode"):
        resize_image(_gradient(4, 4), PreprocessSpec(size=4, resize="zoom"))


@pytest.mark.parametrize("mode", ["stretch", "pad"])
def test_prepared_image_is_not_resized_again(mode: str) -> None:
    spec = PreprocessSpec(size=16, resize=mode)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
    prepared = resize_image(image, spec)
    assert resize_image(prepared, spec) is prepared
    assert np.array_equal(to_array(prepared, spec), to_array(image, spec))
