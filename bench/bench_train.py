"""Training throughput: triplets/s on cached features vs through the backbone at every step,
and the cost of an ensemble's members trained as one.

Both sides run the same heads, loss, backward and Adam step on the same real triplets; the
end-to-end side also decodes, crops and preprocesses the three images of each triplet and runs
the frozen backbone on them, as the published replications did at every step. The members
side times one step of ``--members`` members (each on its own triplets, one batched pass)
against one member's step, alternating the two so that a busy machine slows both alike.

    python bench/bench_train.py [--data DIR] [--cache DIR] [--backbone NAME]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.backbones import build_backbone
from model.ctl import CTLModel
from runtime.preprocess import to_batch
from training.config import TrainingSettings
from training.features import FeatureOptions, load_cache, use_all_cores
from training.loss import CTLLoss
from training.sampling import TripletSampler
from training.stl import STLData, rgb
from training.train import DEFAULT_MEMBERS, Dataset, Tensors, train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    FeatureOptions.add_arguments(p, TrainingSettings())
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cached-steps", type=int, default=20)
    p.add_argument("--e2e-batch-size", type=int, default=32)
    p.add_argument("--e2e-steps", type=int, default=2)
    p.add_argument("--members", type=int, default=DEFAULT_MEMBERS, help="ensemble to time")
    p.add_argument("--rounds", type=int, default=3, help="alternations of 1 and N members")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = use_all_cores()
    cache, _ = load_cache(FeatureOptions.from_namespace(p, args))
    data = STLData.load(args.data)
    ds = Dataset.build(cache, data, seed=0)
    t = Tensors.load(cache, cache.views)
    loss_fn = CTLLoss()  # ctl train's defaults
    ds.add_attention_targets(cache, data)  # ctl train's default attention supervision
    sampler = TripletSampler(ds.examples["train"], ds.product_cat, ds.scene_products)
    gen = torch.Generator().manual_seed(0)

    def steps_per_s(members: int, steps: int) -> float:
        """Optimizer steps per second of ``members`` members, each on its own triplets."""
        model = CTLModel(
            t.scene_global.shape[-1], t.scene_regions.shape[-1], ds.categories, members=members
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rngs = [np.random.default_rng(k) for k in range(members)]
        triplets = np.stack([sampler.epoch(r) for r in rngs])
        model.train()
        bsz = args.batch_size
        train_step(model, opt, loss_fn, t, triplets[:, :bsz], gen, ds, attention_weight=1.0)
        start = time.perf_counter()
        for k in range(steps):
            batch = triplets[:, (k * bsz) % triplets.shape[1] :][:, :bsz]
            train_step(model, opt, loss_fn, t, batch, gen, ds, attention_weight=1.0)
        return steps / (time.perf_counter() - start)

    one, many = [], []
    for _ in range(args.rounds):
        one.append(steps_per_s(1, args.cached_steps))
        many.append(steps_per_s(args.members, args.cached_steps))
    cached_rate = float(np.median(one)) * args.batch_size
    step_ratio = float(np.median([a / b for a, b in zip(one, many, strict=True)]))
    model = CTLModel(t.scene_global.shape[-1], t.scene_regions.shape[-1], ds.categories)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    triplets = sampler.epoch(np.random.default_rng(0))
    model.train()

    backbone = build_backbone(args.backbone, args.backbone_weights)
    crops = cache.meta["crops"]

    def scene_image(row: int) -> Image.Image:
        return rgb(data.scene_path(crops[row][0])).crop(tuple(crops[row][1]))

    start = time.perf_counter()
    done = 0
    bsz = args.e2e_batch_size
    for k in range(args.e2e_steps):
        batch = triplets[k * bsz : (k + 1) * bsz]
        scenes = to_batch([scene_image(r) for r in batch[:, 0]], backbone.spec)
        products = [ds.products[j] for j in np.concatenate([batch[:, 1], batch[:, 2]])]
        prods = to_batch([rgb(data.product_path(p)) for p in products], backbone.spec)
        with torch.no_grad():
            sg, sr = backbone(torch.from_numpy(scenes))
            pg, _ = backbone(torch.from_numpy(prods))
        local = np.stack(
            [np.arange(len(batch)), np.arange(len(batch)), len(batch) + np.arange(len(batch))],
            axis=1,
        )
        features = Tensors(sg[None], sr[None], pg[None])
        train_step(model, opt, loss_fn, features, local[None], gen, ds, batch[None])
        done += len(batch)
    e2e_rate = done / (time.perf_counter() - start)
    print(
        json.dumps(
            {
                "backbone": args.backbone,
                "threads": threads,
                "cached_triplets_s": round(cached_rate, 1),
                "cached_batch_size": args.batch_size,
                "e2e_triplets_s": round(e2e_rate, 2),
                "e2e_batch_size": bsz,
                "ratio": round(cached_rate / e2e_rate, 1),
                "members": args.members,
                "members_step_time_ratio": round(step_ratio, 2),
                "rounds": args.rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
