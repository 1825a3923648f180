"""``report.md`` of an evaluation: the run, the numbers in tables, the pictures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PAPER_NOTE = (
    "For comparison: the paper reports AUC 0.753 on Fashion-2 (its Table 2) with about 20x more "
    "training pairs; the LSE replication reported MRR@10 of 0.47-0.52 per category."
)


@dataclass(frozen=True)
class Picture:
    """A PNG beside the report and the sentence that says what it shows."""

    filename: str
    title: str
    caption: str


def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None or x != x else f"{float(x):.{digits}f}"


def _ci(pair: Sequence[float]) -> str:
    return f"[{_f(pair[0])}, {_f(pair[1])}]"


SCORER_COLUMNS = ("auc", "auc_ci95", "auc_exact", "mrr", "mrr_ci95", "mrr_10")


def _cells(m: Mapping[str, Any], keys: Sequence[str], ks: Sequence[str]) -> list[str]:
    """The table cells of ``m``'s ``keys`` (``*_ci95``: an interval), then of its top-k."""
    cells = [_ci(m[key]) if key.endswith("_ci95") else _f(m[key]) for key in keys]
    return cells + [_f(m["top_k_accuracy"][k]) for k in ks]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return [*lines, ""]


def _run_line(run_metrics: Mapping[str, Any]) -> str:
    if "best_val_auc" not in run_metrics:
        return ""
    auc, epoch = _f(run_metrics["best_val_auc"]), run_metrics.get("best_epoch")
    return f", best val AUC {auc} at epoch {epoch} of {run_metrics.get('epochs')}"


def _held_out_line(by_split: Mapping[str, int]) -> str:
    parts = ", ".join(f"{n} {split}" for split, n in by_split.items())
    seen = by_split.get("train", 0) + by_split.get("val", 0)
    warn = " **Not held out: the run trained or selected on some of these pairs.**" if seen else ""
    return f"- pairs by the run's own split: {parts or 'unknown'}.{warn}"


def _crops_line(crops: Mapping[str, Any]) -> str:
    dropped = ", ".join(f"{n} {why}" for why, n in crops.get("dropped", {}).items()) or "none"
    return f"{crops.get('kept', 0)} pairs kept; dropped: {dropped}"


def render(
    metrics: Mapping[str, Any],
    run_metrics: Mapping[str, Any],
    notes: Mapping[str, str],
    pictures: Sequence[Picture],
) -> str:
    """The report as markdown text."""
    ks = list(metrics["top_k_accuracy"])
    prior = metrics["prior"]
    scorers = {
        "model": metrics,
        f"model+prior (lambda {prior['weight']:g})": prior,
        **metrics["members"],
        **metrics["baselines"],
    }
    lines = [
        "# Evaluation report",
        "",
        f"- run: `{metrics['run']}` (backbone `{metrics['backbone']}`{_run_line(run_metrics)})",
        f"- data: `{metrics['data']}`, split `{metrics['split']}`: {metrics['n_pairs']} pairs "
        f"({metrics['n_crops']} scene crops) ranked against {metrics['n_products']} products",
        f"- crop rules: {_crops_line(metrics['crops'])}",
        _held_out_line(metrics.get("pairs_by_run_split", {})),
        "- negatives: products of the positive's category, never another product labelled in "
        "the same scene; AUC = binary choice against one random negative, MRR@10 = rank among "
        f"the positive and 9 random negatives, both averaged over {metrics['draws']} draws "
        f"(seed {metrics['seed']}); top-k and MRR rank the positive among all products of its "
        "category; ties count in expectation; 95% intervals: bootstrap over pairs.",
        "",
        "## Model and baselines",
        "",
    ]
    lines += _table(
        [
            "scorer",
            "AUC",
            "AUC 95% CI",
            "AUC (all negatives)",
            "MRR",
            "MRR 95% CI",
            "MRR@10",
            *(f"top-{k}" for k in ks),
        ],
        [[name, *_cells(m, SCORER_COLUMNS, ks)] for name, m in scorers.items()],
    )
    named = [
        "model",
        "model+prior",
        "member_k" if metrics["members"] else "",
        *metrics["baselines"],
    ]
    lines += [f"- **{name}**: {notes.get(name, '')}" for name in named]
    lines += ["", PAPER_NOTE, ""]
    lines += ["## Per category (model)", ""]
    lines += _table(
        ["category", "pairs", "AUC", "MRR", "MRR@10", *(f"top-{k}" for k in ks)],
        [
            [cat, str(m["n"]), *_cells(m, ("auc", "mrr", "mrr_10"), ks)]
            for cat, m in metrics["per_category"].items()
        ],
    )
    lines += ["## AUC per category, all scorers", ""]
    lines += _table(
        ["category", *scorers],
        [
            [cat, *(_f(m["per_category"][cat]["auc"]) for m in scorers.values())]
            for cat in metrics["per_category"]
        ],
    )
    att = metrics["attention"]
    lines += ["## Attention (the paper's Table 3)", ""]
    lines += [
        f"On the {att['n']} pairs whose cropped scene shows another labelled product, a region of "
        "the 7x7 grid is relevant when more than half of it lies inside such a product's box. "
        "A hit: one of the 1 (3) most attended regions, for the pair's category, is relevant; "
        "random: the exact chance for regions drawn at random.",
        "",
    ]
    lines += _table(
        ["", "top-1 hit", "top-3 hit"],
        [
            ["attention of the pair's category", _f(att["top1_hit"]), _f(att["top3_hit"])],
            ["random regions", _f(att["random_top1_hit"]), _f(att["random_top3_hit"])],
            [
                f"best fixed region (cell {att['best_fixed_region']}, chosen on these scenes)",
                _f(att["best_fixed_top1_hit"]),
                "–",
            ],
        ],
    )
    lines += ["## Pictures", ""]
    for p in pictures:
        lines += [f"### {p.title}", "", f"{p.caption[0].upper()}{p.caption[1:]}.", ""]
        lines += [f"![{p.title}]({p.filename})", ""]
    return "\n".join(lines)
