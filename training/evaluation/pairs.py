"""Selecting what ``ctl evaluate`` ranks: the pairs of a split, their CTL crops, and per
category the pairs against every catalog product of the category."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from training.crop import CropResult, CropStats, PairCrops, PixelBox
from training.stl import BBox, Pair, STLData, rgb

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "val", "test")


class EvaluationError(RuntimeError):
    """The run or the data cannot be evaluated (no pairs left, unknown split, ...)."""


@dataclass(frozen=True)
class Crop:
    """One scene crop, shared by the pairs of that scene with the same box."""

    scene: str
    bbox: BBox
    box: PixelBox
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


@dataclass(frozen=True)
class EvalPair:
    """A test pair resolved to its crop row, catalog row and category."""

    pair: Pair
    crop: int
    product: int
    category: str


@dataclass(frozen=True)
class CategoryPairs:
    """The pairs of one category against all the category's catalog products."""

    cat_idx: int
    pairs: np.ndarray  # (n,) rows into the evaluation's pair list
    crops: np.ndarray  # (n,) crop rows
    products: np.ndarray  # (m,) catalog rows
    pos: np.ndarray  # (n,) column of each positive
    exclude: np.ndarray  # (n, m) other products labelled with the same scene


def select_pairs(
    data: STLData, categories: Sequence[str], split: str, run_split: dict[str, str]
) -> list[Pair]:
    """Pairs with both images in one of the model's categories and the split, deduplicated."""
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    known = set(categories)
    seen: set[tuple[str, str]] = set()
    out: list[Pair] = []
    for p in data.pairs_with_images():
        if data.categories.get(p.product) not in known or (p.scene, p.product) in seen:
            continue
        if split != "all" and run_split.get(p.scene) != split:
            continue
        seen.add((p.scene, p.product))
        out.append(p)
    if not out:
        hint = " (is this the data the run was trained on?)" if split != "all" else ""
        raise EvaluationError(f"no pairs of split {split!r} with both images in {data.root}{hint}")
    return out


def crop_pairs(
    data: STLData, pairs: Sequence[Pair]
) -> tuple[list[Crop], list[int | None], CropStats]:
    """The CTL crop of each pair: unique crops, each pair's crop row (``None``: dropped), stats."""
    stats, pair_crops = CropStats(), PairCrops(data)
    crops: list[Crop] = []
    results: dict[tuple[str, BBox], tuple[CropResult, int | None]] = {}
    rows: list[int | None] = []
    for p in pairs:
        key = (p.scene, p.bbox)
        if key not in results:
            result, row, size = pair_crops(p), None, pair_crops.size(p.scene)
            if result.box is not None and size is not None:
                row = len(crops)
                crops.append(Crop(p.scene, p.bbox, result.box, *size))
            results[key] = (result, row)
        result, row = results[key]
        stats.add(result.reason)
        rows.append(row)
    return crops, rows, stats


def load_crop(data: STLData, crop: Crop) -> Image.Image:
    return rgb(data.scene_path(crop.scene)).crop(crop.box)


def group_by_category(
    pairs: Sequence[EvalPair],
    categories: Sequence[str],
    catalog_categories: np.ndarray,
    catalog_row: dict[str, int],
    scene_products: dict[str, set[str]],
) -> dict[str, CategoryPairs]:
    """Per category: its pairs, its catalog products, the positives' columns and exclusions."""
    out: dict[str, CategoryPairs] = {}
    for c, name in enumerate(categories):
        rows = np.array([i for i, p in enumerate(pairs) if p.category == name], np.int64)
        if rows.size == 0:
            continue
        products = np.flatnonzero(catalog_categories == name)
        col = {int(r): j for j, r in enumerate(products)}
        exclude = np.zeros((rows.size, products.size), bool)
        for i, r in enumerate(rows):
            p = pairs[r]
            for other in scene_products.get(p.pair.scene, set()) - {p.pair.product}:
                j = col.get(catalog_row.get(other, -1))
                if j is not None:
                    exclude[i, j] = True
        ok = products.size - 1 - exclude.sum(1) > 0
        if not ok.all():
            log.warning("%s: %d pairs without any negative left out", name, int((~ok).sum()))
            rows, exclude = rows[ok], exclude[ok]
        if rows.size == 0:
            continue
        out[name] = CategoryPairs(
            c,
            rows,
            np.array([pairs[r].crop for r in rows], np.int64),
            products,
            np.array([col[pairs[r].product] for r in rows], np.int64),
            exclude,
        )
    return out
