"""Batch-scoring benchmark: `ctl batch-score` on every scene of a folder x all categories, on a
local Ray, against the bare encoder's best images/s on the same photos, in the same run.

The bare encoder (bench_service.BareEncoder: the same ONNX files and decoding, no Ray, no
search) is swept over batch sizes with one call at a time and with as many overlapping calls as
it has lanes; its best images/s is the baseline. Both sides decode the JPEGs. The job's time
includes starting its actors (loading encoder and catalog) and ranking every category. Ray's
fixed cost (the same pipeline with a no-op actor) is measured after the job, in the same run.

    python bench/bench_batch.py --artifacts artifacts --scenes ../shared/stl-fashion/images/scenes
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_service import BareEncoder

from batch.score import read_inputs, run
from service.config import Settings
from service.serving import encoder_lanes

log = logging.getLogger("bench_batch")
REPO = Path(__file__).resolve().parents[1]


class _Noop:
    """An actor that loads nothing and scores nothing: what is left is Ray's own cost."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[int]]:
        return {"scenes": [len(batch["scene"])]}


def ray_fixed_seconds(inputs: list[dict[str, str]], batch_size: int, actors: int) -> float:
    """The job's pipeline (the same blocks, batches and actor pool) with a no-op actor: Ray's
    fixed cost of a run on this machine (actor processes, Ray Data's start). In a fresh local Ray
    started as the job's was, so that neither finds the other's processes warm."""
    import ray

    ray.shutdown()
    ray.init(include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    blocks = math.ceil(len(inputs) / batch_size)
    ray.data.from_items(inputs, override_num_blocks=blocks).map_batches(
        _Noop, batch_size=batch_size, concurrency=actors, num_cpus=1
    ).take_all()
    seconds = time.perf_counter() - start
    ray.shutdown()
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--scenes", type=Path, default=REPO.parent / "shared/stl-fashion/images/scenes")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sample", type=int, default=256, help="photos for the bare encoder sweep")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    inputs = read_inputs(args.scenes)
    photos = [Path(r["scene"]).read_bytes() for r in inputs[: args.sample]]
    settings = Settings(artifacts_dir=args.artifacts, device="cpu")
    bare = BareEncoder(settings)
    lanes = encoder_lanes(settings)

    def best_bare() -> float:
        """The bare encoder's best images/s over batch sizes and 1 or ``lanes`` callers."""
        best = 0.0
        for callers in sorted({1, lanes}):
            for bs, ips in bare.throughput(photos, [1, 4, 16], callers=callers).items():
                log.info("bare encoder: %d call(s) at once, batch %d: %.1f img/s", callers, bs, ips)
                best = max(best, ips)
        return best

    # Before and after the job, so both sides see the machine's load of the same minutes.
    before = best_bare()
    with tempfile.TemporaryDirectory() as out:
        report = run(inputs, args.artifacts, Path(out), k=args.k, batch_size=args.batch_size)
    fixed = ray_fixed_seconds(inputs, args.batch_size, report["actors"])
    best = (before + best_bare()) / 2
    ratio = report["scenes_per_s"] / best
    # The same job without Ray's fixed cost: what the ratio tends to on archives large enough
    # for that cost to vanish (or on a machine that starts Ray's processes faster).
    ratio_past_fixed = report["scenes"] / (report["seconds"] - fixed) / best
    figures = {
        **report,
        "ray_fixed_seconds": round(fixed, 2),
        "bare_best_images_per_s": round(best, 2),
        "ratio": round(ratio, 3),
        "ratio_without_ray_fixed": round(ratio_past_fixed, 3),
        "target": 0.7,
        "load_average": os.getloadavg(),
    }
    sys.stdout.write(json.dumps(figures) + "\n")
    log.info(
        "job: %d scenes x all categories in %.1f s = %.1f scenes/s (Ray's fixed cost %.1f s); "
        "bare encoder best %.1f images/s; ratio %.2f (target >= 0.7), %.2f without Ray's fixed "
        "cost",
        report["scenes"],
        report["seconds"],
        report["scenes_per_s"],
        fixed,
        best,
        ratio,
        ratio_past_fixed,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
