"""Calibration images for ``ctl export --precision int8``: the run's training data only.

Scene crops (the CTL crop rules) of training-split scenes for the scene encoder, and photos of
products that appear only in training-split pairs for the product encoder, never a val or test
image, so the int8 bar measured on val is not flattered by calibration.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from training.evaluation.pairs import crop_pairs, load_crop
from training.stl import STLData, rgb


def calibration_images(
    run_dir: Path, data_dir: Path, n: int, seed: int = 0
) -> tuple[list[Image.Image], list[Image.Image]]:
    """``n`` training scene crops and ``n`` training product photos, drawn with ``seed``."""
    split_path = Path(run_dir) / "split.json"
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path} not found: the run's training split is needed")
    split: dict[str, str] = json.loads(split_path.read_text())
    data = STLData.load(data_dir)
    pairs = data.pairs_with_images()
    train = [p for p in pairs if split.get(p.scene) == "train"]
    held_out = {p.product for p in pairs if split.get(p.scene) != "train"}
    if not train:
        raise FileNotFoundError(f"no training pairs of {run_dir} with images in {data_dir}")
    rng = random.Random(seed)
    crops, _, _ = crop_pairs(data, rng.sample(train, min(len(train), 4 * n)))
    products = sorted({p.product for p in train} - held_out)
    scenes = [load_crop(data, c) for c in crops[:n]]
    return scenes, [rgb(data.product_path(s)) for s in rng.sample(products, min(n, len(products)))]
