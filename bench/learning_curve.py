"""How much data buys how much accuracy: ``ctl train --train-fraction F`` for several fractions
and seeds, each run scored on the val split (AUC against a random same-category negative and
top-10 over the whole category, as ``ctl evaluate`` computes them), a fit of each against
log2(training pairs), and where the paper's 72k pairs would fall (an extrapolation).

Every run keeps its split (``--seed``): val is the same for all of them; the fraction's scenes
and the initialization follow the run's seed (``--init-seed``), and a smaller fraction's scenes
are a subset of a larger one's. A run already scored is skipped and an interrupted one resumes
from its ``last.pt``, so the command can be run again until it finishes.

    python bench/learning_curve.py --data ../shared/stl-fashion --out DIR [--cache DIR]

writes ``DIR/learning_curve.json`` and ``DIR/learning_curve.png`` (runs in ``DIR/runs/``).
"""

from __future__ import annotations

import argparse
import logging
import math
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runtime.atomic import write_json
from training.config import TrainingSettings
from training.evaluation.run import Options, metrics_of, read_json, run_evaluation
from training.train import TrainOptions, train

log = logging.getLogger("learning_curve")

PAPER_PAIRS = 72_198
"""STL-Fashion's pairs in the paper (Kang et al. 2019), where its model reached AUC 0.753."""
LOG2_PAPER = math.log2(PAPER_PAIRS)
FRACTIONS = "1/16,1/8,1/4,1/2,1"
PER_RUN_OPTIONS = frozenset({"data", "cache", "out", "resume", "init_seed", "train_fraction"})
RECIPE_NOTE = "ctl train's defaults at the commit named in 'commit', with the flags in 'train_args'"


@dataclass(frozen=True)
class Fit:
    """``y = intercept + slope * log2(pairs)``, fitted per seed and on all points."""

    slope: float  # gain per doubling of the training pairs, all runs together
    intercept: float
    slope_se: float | None  # standard error of the slope over the seeds' own fits (2+ seeds)
    seed_lines: list[tuple[float, float]]  # each seed's (slope, intercept)
    at_paper: float  # the fit at PAPER_PAIRS (an extrapolation)


def fit_log2(points: list[tuple[int, float, float]]) -> Fit:
    """Least squares of ``value`` on log2(``pairs``) over ``(seed, pairs, value)`` points; the
    slope's uncertainty is the spread of the per-seed slopes (each seed's own curve), which
    carries the noise of both the subsets and the initialization."""
    seeds = sorted({s for s, _, _ in points})
    x = np.log2([p for _, p, _ in points])
    y = np.array([v for _, _, v in points])
    slope, intercept = np.polyfit(x, y, 1)
    lines = []
    for seed in seeds:
        xs = np.log2([p for s, p, _ in points if s == seed])
        if len(xs) < 2:
            continue  # a seed begun but not yet a curve
        b, a = np.polyfit(xs, [v for s, _, v in points if s == seed], 1)
        lines.append((float(b), float(a)))
    slopes = [b for b, _ in lines]
    se = float(np.std(slopes, ddof=1) / math.sqrt(len(slopes))) if len(slopes) > 1 else None
    return Fit(float(slope), float(intercept), se, lines, float(intercept + slope * LOG2_PAPER))


def run_name(fraction: Fraction, seed: int) -> str:
    return f"f{fraction.numerator}-{fraction.denominator}-s{seed}"


def train_and_score(args: argparse.Namespace, fraction: Fraction, seed: int) -> dict[str, Any]:
    """One run (trained unless already there) and its val metrics (``val.json`` in the run)."""
    run_dir: Path = args.out / "runs" / run_name(fraction, seed)
    scored = run_dir / "val.json"
    if scored.is_file():
        log.info("%s: already scored, skipped", run_dir.name)
        result: dict[str, Any] = read_json(scored, {})
        return result
    argv = ["--data", str(args.data), "--out", str(run_dir), "--seed", str(args.split_seed)]
    argv += ["--init-seed", str(seed), "--train-fraction", str(float(fraction)), "--resume"]
    argv += ["--epochs", str(args.epochs), *args.cache_args, *args.train_args]
    if not (run_dir / "metrics.json").is_file():
        log.info("%s: ctl train %s", run_dir.name, " ".join(argv))
        train(TrainOptions.parse(argv))
    trained = read_json(run_dir / "metrics.json", {})
    opts = Options(split="val", seed=0, draws=args.draws, n_boot=args.bootstrap)
    m = metrics_of(run_evaluation(run_dir, args.data, args.out / "eval-cache", opts), opts)
    result = {
        "fraction": str(fraction),
        "seed": seed,
        "train_pairs": trained["train_pairs"],
        "val_pairs": m["n_pairs"],
        "val_auc": m["auc"],
        "val_auc_ci95": m["auc_ci95"],
        "val_top10": m["top_k_accuracy"]["10"],
        "val_mrr": m["mrr"],
        "popularity_top10": m["baselines"]["popularity"]["top_k_accuracy"]["10"],
        "train_best_val_auc": trained["best_val_auc"],
        "best_epoch": trained["best_epoch"],
        "train_seconds": trained["seconds"]["train"],
    }
    write_json(scored, result)
    log.info("%s: %s", run_dir.name, result)
    return result


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def summarize(runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The curve: each run, per fraction mean and spread, and the fits."""
    by_fraction = []
    for fraction in args.fractions:
        rs = [r for r in runs if r["fraction"] == str(fraction)]
        if not rs:
            continue
        by_fraction.append(
            {
                "fraction": str(fraction),
                "train_pairs_mean": float(np.mean([r["train_pairs"] for r in rs])),
                **{
                    f"{k}_{stat}": float(fn([r[k] for r in rs]))
                    for k in ("val_auc", "val_top10", "popularity_top10")
                    for stat, fn in (("mean", np.mean), ("min", np.min), ("max", np.max))
                },
            }
        )
    fits = {}
    for key in ("val_auc", "val_top10"):
        f = fit_log2([(r["seed"], r["train_pairs"], r[key]) for r in runs])
        fits[key] = {
            "gain_per_doubling": f.slope,
            "gain_per_doubling_se": f.slope_se,
            "intercept": f.intercept,
            "seed_lines": [{"gain_per_doubling": b, "intercept": a} for b, a in f.seed_lines],
            "extrapolated_at_paper_pairs": f.at_paper,
            "extrapolated_at_paper_pairs_seeds": [a + b * LOG2_PAPER for b, a in f.seed_lines],
        }
    first = args.out / "runs" / run_name(Fraction(runs[0]["fraction"]), runs[0]["seed"])
    options = read_json(first / "config.json", {}).get("train", {})
    return {
        "recipe": RECIPE_NOTE,
        "commit": git_commit(),
        "train_args": args.train_args,
        "train_options": {k: v for k, v in options.items() if k not in PER_RUN_OPTIONS},
        "epochs": args.epochs,
        "split_seed": args.split_seed,
        "seeds": sorted({r["seed"] for r in runs}),
        "val_pairs": runs[0]["val_pairs"],
        "paper_pairs": PAPER_PAIRS,
        "paper_pairs_note": "an extrapolation of the log2 fit far beyond the measured range",
        "fits": fits,
        "by_fraction": by_fraction,
        "runs": runs,
    }


def _gain(fit: dict[str, Any]) -> str:
    se = fit["gain_per_doubling_se"]
    return f"{fit['gain_per_doubling']:+.4f} ± " + ("?" if se is None else f"{se:.4f}")


def plot(summary: dict[str, Any], path: Path) -> None:
    """AUC and top-10 against training pairs (log axis), the fits and the 72k extrapolation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.atomic import atomic_path

    runs = summary["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = [
        ("val_auc", "val AUC (random same-category negative)"),
        ("val_top10", "val top-10 over the whole category"),
    ]
    for ax, (key, label) in zip(axes, panels, strict=True):
        fit = summary["fits"][key]
        pairs = np.array([r["train_pairs"] for r in runs], float)
        ax.scatter(pairs, [r[key] for r in runs], s=18, color="tab:blue", label="runs (seeds)")
        means = summary["by_fraction"]
        ax.plot(
            [m["train_pairs_mean"] for m in means],
            [m[f"{key}_mean"] for m in means],
            "o-",
            color="tab:blue",
            lw=2,
            label="mean over seeds",
        )
        grid = np.geomspace(pairs.min(), PAPER_PAIRS, 100)
        line = fit["intercept"] + fit["gain_per_doubling"] * np.log2(grid)
        seeds = np.array(
            [[d["intercept"] + d["gain_per_doubling"] * np.log2(grid)] for d in fit["seed_lines"]]
        )[:, 0]
        measured = grid <= pairs.max()
        ax.plot(grid[measured], line[measured], color="tab:red", label="fit on log2(pairs)")
        ax.plot(grid[~measured], line[~measured], "--", color="tab:red", label="extrapolated")
        ax.fill_between(
            grid, seeds.min(0), seeds.max(0), color="tab:red", alpha=0.12, label="seeds' own fits"
        )
        at = fit["extrapolated_at_paper_pairs"]
        ax.scatter([PAPER_PAIRS], [at], marker="*", s=160, color="tab:red", zorder=3)
        ax.annotate(
            f"{at:.3f} at {PAPER_PAIRS:,} pairs\n(paper's scale; extrapolation)",
            (PAPER_PAIRS, at),
            xytext=(-10, -34),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
        if key == "val_top10":
            ax.plot(
                [m["train_pairs_mean"] for m in means],
                [m["popularity_top10_mean"] for m in means],
                "s:",
                color="tab:green",
                label="popularity (the run's training counts)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training pairs (log2 scale)")
        ax.set_ylabel(label)
        ax.set_title(f"{_gain(fit)} per doubling", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"Learning curve on {summary['val_pairs']} val pairs, seeds {summary['seeds']} "
        f"(band: the seeds' own fits; commit {summary['commit']})",
        fontsize=10,
    )
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    s = TrainingSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=s.data_dir, help="STL data directory")
    p.add_argument("--cache", type=Path, default=None, help="feature cache root (ctl train's)")
    p.add_argument("--out", type=Path, required=True, help="runs, JSON and PNG go here")
    p.add_argument("--fractions", default=FRACTIONS, help="comma-separated, e.g. 1/16,1/2,1")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated init/subset seeds")
    p.add_argument("--split-seed", type=int, default=s.seed, help="the split of every run")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--draws", type=int, default=10, help="negative draws for AUC")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the AUC CI")
    p.add_argument("train_args", nargs="*", help="more ctl train flags after '--' (default: none)")
    args = p.parse_args(argv)
    args.fractions = [Fraction(f) for f in args.fractions.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if any(not 0 < f <= 1 for f in args.fractions) or len(args.fractions) < 2:
        p.error("--fractions: at least two, each in (0, 1]")
    args.cache_args = ["--cache", str(args.cache)] if args.cache else []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # Seed by seed, so that an interrupted curve has whole seeds; the JSON and PNG are
    # rewritten after each run from the runs done so far ("complete" says whether all are).
    plan = [(f, s) for s in args.seeds for f in args.fractions]
    runs: list[dict[str, Any]] = []
    for i, (fraction, seed) in enumerate(plan, 1):
        log.info("run %d/%d: fraction %s, seed %d", i, len(plan), fraction, seed)
        runs.append(train_and_score(args, fraction, seed))
        if len({r["fraction"] for r in runs}) > 1:
            summary = summarize(runs, args) | {"complete": i == len(plan)}
            write_json(args.out / "learning_curve.json", summary)
            plot(summary, args.out / "learning_curve.png")
    for m in summary["by_fraction"]:
        print(
            f"fraction {m['fraction']:>5}: {m['train_pairs_mean']:7.0f} pairs, val AUC "
            f"{m['val_auc_mean']:.3f} [{m['val_auc_min']:.3f}, {m['val_auc_max']:.3f}], top-10 "
            f"{m['val_top10_mean']:.3f} [{m['val_top10_min']:.3f}, {m['val_top10_max']:.3f}] "
            f"(popularity {m['popularity_top10_mean']:.3f})"
        )
    for key, fit in summary["fits"].items():
        print(
            f"{key}: {_gain(fit)} (SE over seeds) per doubling; at {PAPER_PAIRS:,} pairs "
            "(extrapolated) "
            f"{fit['extrapolated_at_paper_pairs']:.3f}"
        )
    print(f"wrote {args.out / 'learning_curve.json'} and {args.out / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
