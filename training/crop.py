"""The CTL crop rules (Kang et al. 2019, Sec. 3): cut the product out of the scene.

Grow the product box by 5% of the image length on each side; candidate regions are the parts
of the image above and below it (fashion) or also left and right of it (home), which therefore
do not overlap it; keep the largest; drop the pair when that crop is under 1/5 of the image.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from training.stl import DROPPED_CATEGORIES, BBox, Pair, STLData

GROW = 0.05
MIN_AREA_FRACTION = 0.2
PixelBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class CropResult:
    """A crop box in pixels (left, top, right, bottom), or ``None`` with the reason for the drop."""

    box: PixelBox | None
    reason: str = "ok"


def validate_bbox(bbox: BBox) -> str | None:
    """The reason a normalized box is invalid, or ``None`` when it is usable."""
    if len(bbox) != 4 or any(v != v for v in bbox):  # NaN check
        return "malformed_bbox"
    left, top, right, bottom = bbox
    if min(bbox) < 0.0 or max(bbox) > 1.0:
        return "bbox_out_of_bounds"
    if left > right or top > bottom:
        return "bbox_inverted"
    if left == right or top == bottom:
        return "bbox_zero_area"
    return None


def crop_box(
    bbox: BBox,
    width: int,
    height: int,
    domain: str = "fashion",
    grow: float = GROW,
    min_area_fraction: float = MIN_AREA_FRACTION,
) -> CropResult:
    """Where to crop a ``width`` x ``height`` scene so the product at ``bbox`` is left out."""
    if domain not in ("fashion", "home"):
        raise ValueError(f"unknown domain {domain!r} (fashion or home)")
    if width <= 0 or height <= 0:
        return CropResult(None, "empty_image")
    reason = validate_bbox(bbox)
    if reason:
        return CropResult(None, reason)
    left, top, right, bottom = bbox
    # Grown box in pixels, clipped to the image.
    gl = max(0, round((left - grow) * width))
    gt = max(0, round((top - grow) * height))
    gr = min(width, round((right + grow) * width))
    gb = min(height, round((bottom + grow) * height))
    candidates: list[PixelBox] = [(0, 0, width, gt), (0, gb, width, height)]
    if domain == "home":
        candidates += [(0, 0, gl, height), (gr, 0, width, height)]

    def area(b: PixelBox) -> int:
        return max(0, b[2] - b[0]) * max(0, b[3] - b[1])

    best = max(candidates, key=area)  # max keeps the first of equals: above wins ties
    if area(best) == 0 or area(best) < min_area_fraction * width * height:
        return CropResult(None, "crop_too_small")
    return CropResult(best, "ok")


def box_in_crop(bbox: BBox, crop: PixelBox, width: int, height: int) -> BBox | None:
    """Map a normalized scene box into normalized coordinates of ``crop``; ``None`` if outside."""
    cl, ct, cr, cb = crop
    cw, ch = cr - cl, cb - ct
    if cw <= 0 or ch <= 0:
        return None
    x0 = max(0.0, (bbox[0] * width - cl) / cw)
    y0 = max(0.0, (bbox[1] * height - ct) / ch)
    x1 = min(1.0, (bbox[2] * width - cl) / cw)
    y1 = min(1.0, (bbox[3] * height - ct) / ch)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def boxes_in_crop(boxes: Iterable[BBox], crop: PixelBox, width: int, height: int) -> list[BBox]:
    """Normalized scene boxes mapped into ``crop`` (those visible in it), without repeats."""
    out: list[BBox] = []
    for bbox in boxes:
        mapped = box_in_crop(bbox, crop, width, height)
        if mapped is not None and mapped not in out:
            out.append(mapped)
    return out


def to_input_frame(box: BBox, width: int, height: int, resize: str) -> BBox:
    """A box normalized to a ``width`` x ``height`` crop, in the square frame the backbone saw
    (``resize``: the preprocessing's ``"stretch"`` or ``"pad"``)."""
    if resize == "stretch":
        return box
    scale = 1.0 / max(width, height)
    w, h = width * scale, height * scale
    ox, oy = (1.0 - w) / 2, (1.0 - h) / 2
    return (ox + box[0] * w, oy + box[1] * h, ox + box[2] * w, oy + box[3] * h)


def drop_reason_for_category(category: str | None) -> str | None:
    """Why a pair is dropped because of its product's category, if it is."""
    if category is None:
        return "no_category"
    if category in DROPPED_CATEGORIES:
        return "dress"
    return None


def image_size(path: Path) -> tuple[int, int] | None:
    """Width and height read from the header; ``None`` when the file is not an image."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


class PairCrops:
    """The crop of each pair of a data directory: the category rule, then ``crop_box`` on the
    scene's size (read once per scene, from the file header only)."""

    def __init__(self, data: STLData) -> None:
        self.data = data
        self.sizes: dict[str, tuple[int, int] | None] = {}

    def size(self, scene: str) -> tuple[int, int] | None:
        if scene not in self.sizes:
            self.sizes[scene] = image_size(self.data.scene_path(scene))
        return self.sizes[scene]

    def __call__(self, pair: Pair) -> CropResult:
        reason = drop_reason_for_category(self.data.category(pair.product))
        if reason is not None:
            return CropResult(None, reason)
        size = self.size(pair.scene)
        if size is None:
            return CropResult(None, "unreadable_scene")
        return crop_box(pair.bbox, *size, self.data.domain)


@dataclass
class CropStats:
    """How many pairs survived cropping, and why the others were dropped."""

    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        if reason == "ok":
            self.kept += 1
        else:
            self.dropped[reason] += 1

    def as_dict(self) -> dict[str, object]:
        return {"kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}
