"""The evaluation's metrics in plain numpy: ranking (AUC, top-k, MRR), bootstrap CIs, attention.

Ranking metrics start from distances (lower = more compatible) of each test pair to the products
of its category. Ties are resolved in expectation over a uniformly random tie-break, so a
constant scorer yields the exact random-ranking values and a popularity scorer, where most
products share the count 0, is not flattered by the order the catalog happens to be in.
Negatives are drawn from a generator seeded by (seed, category) only, so every scorer sees the
same negatives and evaluating twice gives the same numbers.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from training.stl import BBox

KS: tuple[int, ...] = (1, 5, 10, 20, 50)
"""The cut-offs of ``top_k_accuracy`` (the paper's Fig. 5 and its replications)."""


@dataclass(frozen=True)
class RankingBlock:
    """Distances of ``n`` pairs of one category to the ``m`` candidate products of that category.

    ``valid[i, j]`` says whether product ``j`` counts as a negative for pair ``i``: never the
    positive itself, nor (when excluded) another product labelled in the same scene.
    """

    dist: np.ndarray  # (n, m) float
    pos: np.ndarray  # (n,) int, column of the positive
    valid: np.ndarray  # (n, m) bool

    @classmethod
    def build(
        cls, dist: np.ndarray, pos: np.ndarray, exclude: np.ndarray | None = None
    ) -> RankingBlock:
        """Check shapes and derive ``valid`` from the positives and an optional exclusion mask."""
        dist = np.asarray(dist, dtype=np.float64)
        pos = np.asarray(pos, dtype=np.int64)
        if dist.ndim != 2 or pos.shape != (dist.shape[0],):
            raise ValueError(f"dist must be (n, m) and pos (n,), got {dist.shape} and {pos.shape}")
        n, m = dist.shape
        if n and (pos.min() < 0 or pos.max() >= m):
            raise ValueError(f"positive index out of range [0, {m})")
        if np.isnan(dist).any():
            raise ValueError("distances contain NaN")
        valid = np.ones((n, m), bool) if exclude is None else ~np.asarray(exclude, bool)
        if valid.shape != (n, m):
            raise ValueError(f"exclude must be {(n, m)}, got {valid.shape}")
        valid[np.arange(n), pos] = False
        if n and valid.sum(1).min() == 0:
            raise ValueError("every pair needs at least one negative in its category")
        return cls(dist, pos, valid)

    @property
    def positive_dist(self) -> np.ndarray:
        return self.dist[np.arange(len(self.pos)), self.pos]


def positive_counts(block: RankingBlock) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: how many negatives are strictly closer than the positive, and how many tie."""
    dpos = block.positive_dist[:, None]
    less = ((block.dist < dpos) & block.valid).sum(1)
    ties = ((block.dist == dpos) & block.valid).sum(1)
    return less, ties


def topk_hits(less: np.ndarray, ties: np.ndarray, k: int) -> np.ndarray:
    """Probability that the positive is among the first ``k`` (rank uniform over its tie group)."""
    return np.clip((k - less) / (ties + 1.0), 0.0, 1.0)


def reciprocal_ranks(less: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """Expected 1/rank with the positive's rank uniform over ``less+1 .. less+ties+1``."""
    less = np.asarray(less, np.int64)
    ties = np.asarray(ties, np.int64)
    if less.size == 0:
        return np.zeros(0)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int((less + ties).max()) + 2))])
    return (harmonic[less + ties + 1] - harmonic[less]) / (ties + 1.0)


def _sample_negatives(valid: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct columns per row drawn uniformly among the valid ones (fewer valid: padded).

    The padding columns are invalid ones; callers mask them out with ``valid``.
    """
    keys = rng.random(valid.shape)
    keys[~valid] = np.inf
    k = min(k, valid.shape[1])
    return np.argpartition(keys, k - 1, axis=1)[:, :k]


def binary_choice(block: RankingBlock, rng: np.random.Generator, draws: int) -> np.ndarray:
    """Per pair, the share of ``draws`` positive-vs-one-negative choices won (paper's Table 2)."""
    rows = np.arange(len(block.pos))
    dpos = block.positive_dist
    won = np.zeros(len(rows))
    for _ in range(draws):
        neg = _sample_negatives(block.valid, 1, rng)[:, 0]
        dneg = block.dist[rows, neg]
        won += (dneg > dpos).astype(float) + 0.5 * (dneg == dpos)  # a tie is half a win
    return won / draws


def sampled_reciprocal_ranks(
    block: RankingBlock, rng: np.random.Generator, draws: int, negatives: int = 9
) -> np.ndarray:
    """Per pair, mean expected 1/rank among the positive and ``negatives`` random negatives.

    The LSE replication's MRR@10; a category with fewer negatives uses all it has.
    """
    rows = np.arange(len(block.pos))[:, None]
    dpos = block.positive_dist[:, None]
    total = np.zeros(len(block.pos))
    for _ in range(draws):
        cols = _sample_negatives(block.valid, negatives, rng)
        dneg = block.dist[rows, cols]
        ok = block.valid[rows, cols]
        less = ((dneg < dpos) & ok).sum(1)
        ties = ((dneg == dpos) & ok).sum(1)
        total += reciprocal_ranks(less, ties)
    return total / draws


def category_rng(seed: int, category: str) -> np.random.Generator:
    """A generator that depends only on the seed and the category, never on evaluation order."""
    return np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])


@dataclass(frozen=True)
class PairScores:
    """Per-pair metric values of one scorer, pooled over categories (same order as the blocks)."""

    category: np.ndarray  # (n,) str
    auc: np.ndarray  # (n,) share of binary choices won
    rr: np.ndarray  # (n,) expected reciprocal rank among all products of the category
    rr10: np.ndarray  # (n,) the same among the positive and 9 sampled negatives
    less: np.ndarray  # (n,) negatives strictly closer than the positive
    ties: np.ndarray  # (n,) negatives at the same distance
    negatives: np.ndarray  # (n,) valid negatives of the pair

    @property
    def auc_exact(self) -> np.ndarray:
        """The expectation the sampled ``auc`` estimates: share of all negatives beaten."""
        return (self.negatives - self.less - 0.5 * self.ties) / self.negatives

    def topk(self, k: int) -> np.ndarray:
        return topk_hits(self.less, self.ties, k)

    def topk_curve(self, ks: Sequence[int]) -> np.ndarray:
        """Top-k accuracy for each k in ``ks`` (for the curves picture)."""
        return np.array([float(self.topk(k).mean()) if len(self.less) else 0.0 for k in ks])


def score_blocks(blocks: Mapping[str, RankingBlock], seed: int = 0, draws: int = 10) -> PairScores:
    """Every per-pair metric of one scorer on blocks keyed by category."""
    parts = []
    for category, block in blocks.items():
        less, ties = positive_counts(block)
        parts.append(
            PairScores(
                np.full(len(block.pos), category, dtype=object),
                binary_choice(block, category_rng(seed, category), draws),
                reciprocal_ranks(less, ties),
                sampled_reciprocal_ranks(block, category_rng(seed + 1, category), draws),
                less,
                ties,
                block.valid.sum(1),
            )
        )
    dtypes = (object, float, float, float, int, int, int)  # the fields' order
    columns = [[getattr(p, f.name) for p in parts] for f in fields(PairScores)]
    return PairScores(
        *(
            np.concatenate(c).astype(t) if c else np.zeros(0, t)
            for c, t in zip(columns, dtypes, strict=True)
        )
    )


def bootstrap_ci(
    values: np.ndarray, seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-pair ``values`` (pairs resampled)."""
    values = np.asarray(values, float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def summarize(
    scores: PairScores, seed: int = 0, ks: Sequence[int] = KS, n_boot: int = 1000
) -> dict[str, Any]:
    """The metric keys of ``metrics.json`` for one scorer, with per-category breakdown."""

    def topk(mask: np.ndarray) -> dict[str, float]:
        return {str(k): _mean(scores.topk(k)[mask]) for k in ks}

    everything = np.ones(len(scores.auc), bool)
    per_category: dict[str, Any] = {}
    for category in sorted(set(scores.category.tolist())):
        mask = scores.category == category
        per_category[category] = {
            "n": int(mask.sum()),
            "auc": _mean(scores.auc[mask]),
            "mrr": _mean(scores.rr[mask]),
            "mrr_10": _mean(scores.rr10[mask]),
            "top_k_accuracy": topk(mask),
        }
    return {
        "n_pairs": len(scores.auc),
        "auc": _mean(scores.auc),
        "auc_ci95": list(bootstrap_ci(scores.auc, seed, n_boot)),
        "auc_exact": _mean(scores.auc_exact),
        "top_k_accuracy": topk(everything),
        "mrr": _mean(scores.rr),
        "mrr_ci95": list(bootstrap_ci(scores.rr, seed, n_boot)),
        "mrr_10": _mean(scores.rr10),
        "per_category": per_category,
    }


# --- attention analysis (the paper's Table 3) ---


def _union_area(boxes: Sequence[BBox]) -> float:
    """Exact area of a union of axis-aligned boxes (coordinate compression; few boxes)."""
    boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
    if not boxes:
        return 0.0
    xs = sorted({b[0] for b in boxes} | {b[2] for b in boxes})
    area = 0.0
    for x0, x1 in itertools.pairwise(xs):
        spans = sorted((b[1], b[3]) for b in boxes if b[0] <= x0 and b[2] >= x1)
        covered, end = 0.0, -math.inf
        for y0, y1 in spans:
            if y1 <= end:
                continue
            covered += y1 - max(y0, end)
            end = y1
        area += covered * (x1 - x0)
    return area


def region_relevance(boxes: Sequence[BBox], grid: int = 7, min_fraction: float = 0.5) -> np.ndarray:
    """Which cells of a ``grid`` x ``grid`` split of the image lie mostly inside the boxes.

    Boxes are normalized (left, top, right, bottom) in the frame the backbone saw; cells are
    numbered row-major (row * grid + column), the order of the backbone's region vectors. A cell
    is relevant when more than ``min_fraction`` of its area is covered by the union of the boxes.
    """
    relevant = np.zeros(grid * grid, bool)
    cell = 1.0 / grid
    for r in range(grid):
        for c in range(grid):
            x0, y0, x1, y1 = c * cell, r * cell, (c + 1) * cell, (r + 1) * cell
            clipped = [(max(b[0], x0), max(b[1], y0), min(b[2], x1), min(b[3], y1)) for b in boxes]
            relevant[r * grid + c] = _union_area(clipped) > min_fraction * cell * cell
    return relevant


def attention_hits(attention: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Per scene, 1.0 when one of the ``k`` most attended regions is relevant."""
    top = np.argsort(-attention, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevant, top, axis=1).any(1).astype(float)


def random_hits(relevant: np.ndarray, k: int) -> np.ndarray:
    """Per scene, the exact chance that ``k`` regions picked at random include a relevant one."""
    n_regions = relevant.shape[1]
    total = math.comb(n_regions, k)
    return np.array([1.0 - math.comb(n_regions - int(r), k) / total for r in relevant.sum(1)])


def attention_summary(attention: np.ndarray, relevant: np.ndarray) -> dict[str, float | int]:
    """Top-1/top-3 attention hit rates vs random regions and vs the best fixed region (the one
    cell most often relevant on these very scenes: a hindsight baseline that a heatmap
    following the content should still beat), over scenes with a relevant cell."""
    attention = np.asarray(attention, float)
    relevant = np.asarray(relevant, bool)
    if attention.shape != relevant.shape or attention.ndim != 2:
        raise ValueError(f"attention {attention.shape} and relevance {relevant.shape} must match")
    keep = relevant.any(1)
    att, rel = attention[keep], relevant[keep]
    per_cell = rel.mean(0) if len(rel) else np.zeros(relevant.shape[1])
    return {
        "n": int(keep.sum()),
        "top1_hit": _mean(attention_hits(att, rel, 1)),
        "top3_hit": _mean(attention_hits(att, rel, 3)),
        "random_top1_hit": _mean(random_hits(rel, 1)),
        "random_top3_hit": _mean(random_hits(rel, 3)),
        "best_fixed_top1_hit": float(per_cell.max()) if len(rel) else math.nan,
        "best_fixed_region": int(per_cell.argmax()),
    }
