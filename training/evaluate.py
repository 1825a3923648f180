"""``ctl evaluate``: the paper's metrics, baselines, attention analysis, pictures and report.

The scenes are cropped here (the CTL rules) and every product of the data directory is
embedded once, so ranking all pairs against their whole category is a few matrix products:
with unit vectors, d*(s, p) = 2 - <q(s, c), f_p> where q = f_s + sum_i a_i(c) f_i.
Backbone features come from the run's own feature cache when it covers the data (same backbone,
data and crop rules), else they are computed into a cache of the same kind under
``OUT_DIR/cache`` (keyed by backbone and inputs), so a repeated evaluation, of this run or of a
later run on the same backbone, only applies the heads.

The pieces live in ``training/evaluation/``: ``pairs`` (selecting pairs), ``scoring``
(embeddings, the model's distances, ranking), ``baselines``, ``attention`` (analysis),
``run`` (one evaluation and its metrics), ``pictures`` and ``report``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.backbones import BackboneError
from runtime.atomic import write_json, write_text
from runtime.options import option
from training.evaluation.pairs import EvaluationError
from training.evaluation.pictures import draw_pictures
from training.evaluation.report import render
from training.evaluation.run import SCORER_NOTES, Options, metrics_of, read_json, run_evaluation

log = logging.getLogger(__name__)


def evaluate(run_dir: Path, data_dir: Path, out_dir: Path, opts: Options) -> dict[str, Any]:
    """Evaluate a run on a data directory: writes metrics.json, the PNGs and report.md."""
    t0 = time.monotonic()
    ev = run_evaluation(run_dir, data_dir, out_dir / "cache", opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_of(ev, opts)
    pictures = draw_pictures(ev, metrics, opts, out_dir)
    metrics["seconds"]["total"] = round(time.monotonic() - t0, 2)
    run_metrics = read_json(run_dir / "metrics.json", {})
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "report.md", render(metrics, run_metrics, SCORER_NOTES, pictures))
    return metrics


class EvaluateOptions(Options, prog="ctl evaluate"):
    run: Path = option(help="run directory of 'ctl train'")
    data: Path = option(help="STL data directory", setting="data_dir")
    out: Path = option(help="for metrics.json, report.md, PNGs")


def main(argv: Sequence[str]) -> int:
    """``ctl evaluate``: prints the headline numbers; writes OUT_DIR/metrics.json and report.md."""
    opts = EvaluateOptions.parse(argv)
    try:
        m = evaluate(opts.run, opts.data, opts.out, opts)
    except (EvaluationError, BackboneError, FileNotFoundError) as exc:
        log.error("ctl evaluate: %s", exc)
        return 1
    att, prior, pop = m["attention"], m["prior"], m["baselines"]["popularity"]
    print(
        f"{m['n_pairs']} pairs vs {m['n_products']} products: AUC {m['auc']:.3f} "
        f"[{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}], MRR {m['mrr']:.3f}, "
        f"MRR@10 {m['mrr_10']:.3f}, top-10 {m['top_k_accuracy']['10']:.3f}; with the prior "
        f"(lambda {prior['weight']:g}): AUC {prior['auc']:.3f}, MRR {prior['mrr']:.3f}, top-10 "
        f"{prior['top_k_accuracy']['10']:.3f}; popularity: AUC {pop['auc']:.3f}, MRR "
        f"{pop['mrr']:.3f}, top-10 {pop['top_k_accuracy']['10']:.3f}"
    )
    for name, s in m["members"].items():
        print(
            f"  {name}: AUC {s['auc']:.3f}, MRR {s['mrr']:.3f}, "
            f"top-10 {s['top_k_accuracy']['10']:.3f}"
        )
    print(
        f"attention top-1 {att['top1_hit']:.3f} on n={att['n']} (random "
        f"{att['random_top1_hit']:.3f}, best fixed region {att['best_fixed_top1_hit']:.3f}); "
        f"global-only AUC {m['baselines']['global_only']['auc']:.3f}, top-10 "
        f"{m['baselines']['global_only']['top_k_accuracy']['10']:.3f}; report in {opts.out}"
    )
    return 0
