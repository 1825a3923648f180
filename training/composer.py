"""Composed scenes: an outfit's product photos laid out on one canvas, every item's box known.

Catalog photos are front views on a white background; STL scenes include flat lays of exactly
such items. Composing the other items of an outfit into one picture lets the whole scene tower
(global vector, 7x7 regions, category attention) see outfit data as a scene, and because the
composer places every item itself, the regions each item covers are known exactly (attention
can be supervised there and its hit rate measured).

The layout is random but fully determined by the seed: a canvas of random aspect ratio (STL
scene crops are usually wider than tall), a light background (plain, gradient or noisy, like
a floor, a bed or a wall), items in shuffled cells of a grid with random scale and offset, so
neighbours may overlap. The photos' plain background is made transparent, so items sit on the
canvas like cut-outs rather than as pale rectangles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageFilter

COMPOSER_VERSION = 2
"""Bumped whenever the layout rules change, so composition caches rebuild."""
WIDTH = 400  # STL scene photos are 400 px wide
BACKGROUND_TOLERANCE = 24
MAX_UPSCALE = 1.5  # photo pixels: earrings are not blown up to a cell
EDGE = 6  # photo borders are ignored: vignetting and shadows at the edges


@dataclass(frozen=True)
class Composition:
    """The composed image and each input item's box (left, top, right, bottom) in pixels."""

    image: Image.Image
    boxes: list[tuple[int, int, int, int]]

    def normalized_boxes(self) -> list[tuple[float, float, float, float]]:
        """Boxes in [0, 1] of the canvas (the frame a stretch-resized backbone input keeps)."""
        w, h = self.image.size
        return [(b[0] / w, b[1] / h, b[2] / w, b[3] / h) for b in self.boxes]


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    base = rng.uniform(150, 255, 3)
    kind = rng.integers(3)
    if kind == 0:  # plain
        arr = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == 1:  # vertical gradient to another light colour
        other = rng.uniform(150, 255, 3)
        t = np.linspace(0, 1, h)[:, None, None]
        arr = np.broadcast_to(base * (1 - t) + other * t, (h, w, 3)).copy()
    else:  # fabric / floor-like noise
        arr = base + rng.normal(0, 12, (h, w, 1))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


@dataclass(frozen=True)
class Cutout:
    """An item cropped to its extent and the mask that hides its photo's plain background."""

    rgb: Image.Image
    mask: Image.Image


def cutout(image: Image.Image) -> Cutout:
    """The item of a catalog photo, without its background (depends on the photo alone, so
    callers may keep it for photos used in several compositions).

    The background is the median colour of the photo's border (the retailer's is an off-white
    near (236, 231, 224), not pure white); a pixel differing from it by more than
    ``BACKGROUND_TOLERANCE`` in some channel is item. A 3x3 median filter removes speckle; the
    extent ignores the photo's edge and rows and columns with fewer than 3 item pixels.
    """
    rgb = image.convert("RGB")
    arr = np.asarray(rgb)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = Image.new("RGB", rgb.size, tuple(int(v) for v in np.median(border, 0)))
    r, g, b = ImageChops.difference(rgb, bg).split()
    diff = ImageChops.lighter(r, ImageChops.lighter(g, b))
    mask = diff.point(lambda v: 255 if v > BACKGROUND_TOLERANCE else 0).filter(
        ImageFilter.MedianFilter(3)
    )
    on = np.asarray(mask)[EDGE:-EDGE, EDGE:-EDGE] > 0
    cols, rows = np.flatnonzero(on.sum(0) >= 3), np.flatnonzero(on.sum(1) >= 3)
    if not len(cols) or not len(rows):  # nothing stands out (a white item): keep the photo
        return Cutout(rgb, Image.new("L", rgb.size, 255))
    box = (
        int(cols[0]) + EDGE,
        int(rows[0]) + EDGE,
        int(cols[-1]) + EDGE + 1,
        int(rows[-1]) + EDGE + 1,
    )
    return Cutout(rgb.crop(box), mask.crop(box))


def compose_cutouts(items: Sequence[Cutout], seed: int) -> Composition:
    """Lay the cut-out ``items`` on one canvas; the same items and seed give the same
    composition."""
    if not items:
        raise ValueError("compose needs at least one image")
    rng = np.random.default_rng(seed)
    n = len(items)
    w = WIDTH
    h = round(w * rng.uniform(0.6, 1.4))
    canvas = _background(rng, w, h)
    cols = max(1, round(math.sqrt(n * w / h)))
    rows = math.ceil(n / cols)
    cell_w, cell_h = w / cols, h / rows
    slots = rng.permutation(rows * cols)[:n]
    boxes: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * n
    for i in rng.permutation(n):  # random paste order: who overlaps whom
        rgb, mask = items[i].rgb, items[i].mask
        r, c = divmod(int(slots[i]), cols)
        fit = min(cell_w / rgb.width, cell_h / rgb.height) * rng.uniform(0.8, 1.3)
        fit = min(fit, MAX_UPSCALE, w / rgb.width, h / rgb.height)  # small items stay small
        iw, ih = max(1, int(rgb.width * fit)), max(1, int(rgb.height * fit))
        cx = (c + 0.5 + rng.uniform(-0.2, 0.2)) * cell_w
        cy = (r + 0.5 + rng.uniform(-0.2, 0.2)) * cell_h
        x0 = int(np.clip(cx - iw / 2, 0, w - iw))
        y0 = int(np.clip(cy - ih / 2, 0, h - ih))
        rgb = rgb.resize((iw, ih), Image.Resampling.BILINEAR)
        mask = mask.resize((iw, ih), Image.Resampling.BILINEAR)
        canvas.paste(rgb, (x0, y0), mask)
        boxes[i] = (x0, y0, x0 + iw, y0 + ih)
    return Composition(canvas, boxes)
