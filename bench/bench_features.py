"""Images per second through the frozen backbone: torch eager vs ONNX Runtime, same images, one run.

python bench/bench_features.py [--data DIR] [--backbone NAME] [--images 64] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.backbones import BACKBONES, Backbone, build_backbone
from model.preprocess import to_batch
from service.config import Settings
from training.stl import STLData


def real_batch(data_dir: Path, backbone: Backbone, n: int) -> np.ndarray:
    """``n`` real product images, preprocessed as the cache does."""
    data = STLData.load(data_dir)
    images = []
    for sig in data.available_products()[:n]:
        with Image.open(data.product_path(sig)) as im:
            images.append(im.convert("RGB"))
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
    settings = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=settings.data_dir)
    p.add_argument("--backbone", default=settings.backbone, choices=BACKBONES)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    backbone = build_backbone(args.backbone)
    x = real_batch(args.data, backbone, args.images)

    def eager(b: np.ndarray) -> None:
        with torch.no_grad():
            backbone(torch.from_numpy(b))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone.onnx"
        torch.onnx.export(
            backbone,
            (torch.from_numpy(x[:1]),),
            str(path),
            input_names=["image"],
            output_names=["global", "regions"],
            dynamic_axes={"image": {0: "batch"}},
            dynamo=False,
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        eager_rate = rate(eager, x, args.batch_size, args.repeats)
        onnx_rate = rate(
            lambda b: session.run(None, {"image": b}), x, args.batch_size, args.repeats
        )
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
