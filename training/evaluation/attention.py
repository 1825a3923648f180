"""Attention analysis for ``ctl evaluate``: does the attention of a pair's category fall on the
scene's other labelled products (the regions their boxes cover), beside random?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model.preprocess import PreprocessSpec
from training import metrics as M
from training.crop import box_in_crop
from training.evaluation.pairs import Crop, EvalPair
from training.evaluation.scoring import Embedded
from training.stl import BBox


def to_input_frame(box: BBox, width: int, height: int, spec: PreprocessSpec) -> BBox:
    """A box normalized to a ``width`` x ``height`` crop, in the square frame the backbone saw."""
    if spec.resize == "stretch":
        return box
    scale = 1.0 / max(width, height)
    w, h = width * scale, height * scale
    ox, oy = (1.0 - w) / 2, (1.0 - h) / 2
    return (ox + box[0] * w, oy + box[1] * h, ox + box[2] * w, oy + box[3] * h)


def other_boxes(
    crop: Crop, product: str, scene_boxes: dict[str, list[tuple[str, BBox]]]
) -> list[BBox]:
    """The scene's other labelled products, mapped into the crop (those visible in it)."""
    out: list[BBox] = []
    for other, bbox in scene_boxes.get(crop.scene, []):
        if other == product or bbox == crop.bbox:
            continue
        mapped = box_in_crop(bbox, crop.box, crop.width, crop.height)
        if mapped is not None and mapped not in out:
            out.append(mapped)
    return out


def analyse(
    pairs: Sequence[EvalPair],
    crops: Sequence[Crop],
    scenes: Embedded,
    categories: Sequence[str],
    scene_boxes: dict[str, list[tuple[str, BBox]]],
    spec: PreprocessSpec,
    grid: int,
) -> tuple[np.ndarray, np.ndarray, list[list[BBox]]]:
    """Per pair: the attention of its category (n, R), the regions covered by the scene's other
    labelled products (n, R), and those products' boxes in crop coordinates."""
    cat_index = {c: i for i, c in enumerate(categories)}
    attention = np.stack([scenes.attention[p.crop, cat_index[p.category]] for p in pairs])
    boxes = [other_boxes(crops[p.crop], p.pair.product, scene_boxes) for p in pairs]
    relevant = np.stack(
        [
            M.region_relevance([to_input_frame(b, *crops[p.crop].size, spec) for b in bs], grid)
            for p, bs in zip(pairs, boxes, strict=True)
        ]
    )
    return attention, relevant, boxes
