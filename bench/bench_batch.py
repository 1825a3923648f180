"""Batch-scoring benchmark: `ctl batch-score` on every scene of a folder x all categories, on a
local Ray, against the bare encoder's best images/s on the same photos, in the same run.

The bare encoder (bench_service.BareEncoder: the same ONNX files and decoding, no Ray, no
search) is swept over batch sizes with one call at a time and with as many overlapping calls as
it has lanes; its best images/s is the baseline. Both sides decode the JPEGs. The job's time
includes starting its actors (loading encoder and catalog) and ranking every category.

    python bench/bench_batch.py --artifacts artifacts --scenes ../shared/stl-fashion/images/scenes
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from bench_service import BareEncoder

from index.batch_score import read_inputs, run
from service.config import Settings
from service.serving import encoder_lanes

log = logging.getLogger("bench_batch")
REPO = Path(__file__).resolve().parents[1]


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
    best = (before + best_bare()) / 2
    ratio = report["scenes_per_s"] / best
    figures = {
        **report,
        "bare_best_images_per_s": round(best, 2),
        "ratio": round(ratio, 3),
        "target": 0.7,
    }
    sys.stdout.write(json.dumps(figures) + "\n")
    log.info(
        "job: %d scenes x all categories in %.1f s = %.1f scenes/s; bare encoder best %.1f "
        "images/s; ratio %.2f (target >= 0.7)",
        report["scenes"],
        report["seconds"],
        report["scenes_per_s"],
        best,
        ratio,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
