"""The scene composer: every item's box inside the canvas, and the same seed the same picture."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from training.composer import Composition, compose_cutouts, cutout


def compose(images: list[Image.Image], seed: int) -> Composition:
    """The composition of whole product photos."""
    return compose_cutouts([cutout(im) for im in images], seed)


def product_photos(n: int) -> list[Image.Image]:
    """Catalog-like photos: an off-white background with a coloured item of varied size."""
    photos = []
    for i in range(n):
        arr = np.full((334, 239, 3), (236, 231, 224), np.uint8)
        h, w = 40 + 50 * i, 30 + 40 * (i % 3)
        arr[100 : 100 + h, 60 : 60 + w] = (20 * i, 100, 200 - 20 * i)
        photos.append(Image.fromarray(arr))
    photos.append(Image.new("RGB", (239, 334), (236, 231, 224)))  # a white-on-white item
    return photos


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_boxes_inside_the_canvas_and_cover_the_items(n: int) -> None:
    for seed in range(5):
        comp = compose(product_photos(n)[:n], seed)
        w, h = comp.image.size
        assert len(comp.boxes) == n
        for left, top, right, bottom in comp.boxes:
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
        for b in comp.normalized_boxes():
            assert all(0.0 <= v <= 1.0 for v in b)


def test_item_pixels_land_in_their_box() -> None:
    photos = product_photos(3)[:1]
    comp = compose(photos, 3)
    arr = np.asarray(comp.image).astype(int)
    left, top, right, bottom = comp.boxes[0]
    item = np.abs(arr - (0, 100, 200)).max(-1) < 30  # the item's colour
    ys, xs = np.nonzero(item)
    assert len(ys) > 100
    assert left <= xs.min() and xs.max() < right and top <= ys.min() and ys.max() < bottom


def test_deterministic_for_a_seed() -> None:
    photos = product_photos(4)
    a, b, c = compose(photos, 7), compose(photos, 7), compose(photos, 8)
    assert a.boxes == b.boxes and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.boxes != c.boxes or not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_needs_an_item() -> None:
    with pytest.raises(ValueError):
        compose([], 0)
