"""Images per second through the frozen backbone: torch eager vs ONNX Runtime, same images, one run.

python bench/bench_features.py [--data DIR] [--backbone NAME] [--images 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.backbones import BACKBONES, Backbone, build_backbone
from runtime.preprocess import to_batch
from training.config import TrainingSettings
from training.features import run_backbone, use_all_cores
from training.stl import STLData, rgb


def real_batch(data_dir: Path, backbone: Backbone, n: int) -> np.ndarray:
    """``n`` real product images, preprocessed as the cache does."""
    data = STLData.load(data_dir)
    images = [rgb(data.product_path(sig)) for sig in data.available_products()[:n]]
    if not images:
        raise SystemExit(f"no product images under {data.product_dir}")
    return to_batch(images, backbone.spec)


def rate(fn: Callable[[np.ndarray], object], x: np.ndarray, batch_size: int, repeats: int) -> float:
    """Best images/s over ``repeats`` passes (after one warm-up batch)."""
    fn(x[:batch_size])
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            fn(x[i : i + batch_size])
        best = max(best, len(x) / (time.perf_counter() - start))
    return best


def main() -> None:
    settings = TrainingSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=settings.data_dir)
    p.add_argument("--backbone", default=settings.backbone, choices=BACKBONES)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = use_all_cores()
    backbone = build_backbone(args.backbone)
    x = real_batch(args.data, backbone, args.images)

    def engine_rate(engine: str) -> float:
        """The calls 'ctl features' makes (its ONNX session is exported in the warm-up)."""
        return rate(lambda b: run_backbone(backbone, b, engine), x, args.batch_size, args.repeats)

    eager_rate, onnx_rate = engine_rate("torch"), engine_rate("onnx")
    print(
        json.dumps(
            {
                "backbone": args.backbone,
                "images": len(x),
                "batch_size": args.batch_size,
                "threads": threads,
                "torch_eager_img_s": round(eager_rate, 1),
                "onnxruntime_img_s": round(onnx_rate, 1),
                "ratio": round(onnx_rate / eager_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
