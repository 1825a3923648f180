"""Attention analysis for ``ctl evaluate``: does the attention of a pair's category fall on the
scene's other labelled products (the regions their boxes cover), beside random?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runtime.preprocess import PreprocessSpec
from training import metrics as M
from training.crop import boxes_in_crop, to_input_frame
from training.evaluation.pairs import Crop, EvalPair
from training.evaluation.scoring import Embedded
from training.stl import BBox


def other_boxes(
    crop: Crop, product: str, scene_boxes: dict[str, list[tuple[str, BBox]]]
) -> list[BBox]:
    """The scene's other labelled products, mapped into the crop (those visible in it)."""
    others = (b for p, b in scene_boxes.get(crop.scene, []) if p != product and b != crop.bbox)
    return boxes_in_crop(others, crop.box, crop.width, crop.height)


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
            M.region_relevance(
                [to_input_frame(b, *crops[p.crop].size, spec.resize) for b in bs], grid
            )
            for p, bs in zip(pairs, boxes, strict=True)
        ]
    )
    return attention, relevant, boxes
