"""The evaluation metrics against values computed by hand on tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics as M


def _perfect(n: int, m: int) -> M.RankingBlock:
    """Pair i's positive is product i and is the only product at distance 0."""
    dist = np.ones((n, m))
    dist[np.arange(n), np.arange(n)] = 0.0
    return M.RankingBlock.build(dist, np.arange(n))


def _reversed(n: int, m: int) -> M.RankingBlock:
    """The positive is the farthest product of all."""
    dist = np.zeros((n, m))
    dist[np.arange(n), np.arange(n)] = 1.0
    return M.RankingBlock.build(dist, np.arange(n))


def test_perfect_model_scores_one() -> None:
    s = M.score_blocks({"Shoes": _perfect(4, 12)}, seed=3)
    out = M.summarize(s, seed=3)
    assert out["auc"] == out["auc_exact"] == 1.0
    assert out["mrr"] == 1.0
    assert out["mrr_10"] == 1.0
    assert out["top_k_accuracy"] == {str(k): 1.0 for k in M.KS}


def test_reversed_model_scores_zero_and_one_over_n() -> None:
    m = 12
    s = M.score_blocks({"Shoes": _reversed(4, m)}, seed=3)
    out = M.summarize(s, seed=3)
    assert out["auc"] == out["auc_exact"] == 0.0
    assert out["mrr"] == pytest.approx(1.0 / m)
    assert out["mrr_10"] == pytest.approx(1.0 / 10)
    assert out["top_k_accuracy"]["1"] == 0.0
    assert out["top_k_accuracy"]["5"] == 0.0
    assert out["top_k_accuracy"]["50"] == 1.0  # only 12 candidates


def test_hand_computed_ranks() -> None:
    # Positive at 0.5; negatives 0.1 and 0.3 closer, 0.5 ties, 0.9 farther.
    dist = np.array([[0.5, 0.1, 0.3, 0.5, 0.9]])
    block = M.RankingBlock.build(dist, np.array([0]))
    less, ties = M.positive_counts(block)
    assert (less[0], ties[0]) == (2, 1)
    # rank is 3 or 4 with equal chance
    assert M.reciprocal_ranks(less, ties)[0] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert M.topk_hits(less, ties, 3)[0] == pytest.approx(0.5)
    assert M.topk_hits(less, ties, 2)[0] == 0.0
    assert M.topk_hits(less, ties, 4)[0] == 1.0
    # binary choice: 1 of 4 negatives farther, 1 tie -> (1 + 0.5) / 4 in expectation
    auc = M.binary_choice(block, np.random.default_rng(0), draws=4000)[0]
    assert auc == pytest.approx(1.5 / 4, abs=0.03)
    assert M.score_blocks({"Shoes": block}).auc_exact[0] == 1.5 / 4


def test_constant_scorer_gives_random_expectation() -> None:
    m = 20
    block = M.RankingBlock.build(np.zeros((3, m)), np.array([0, 5, 7]))
    s = M.score_blocks({"Pants": block})
    harmonic = sum(1.0 / r for r in range(1, m + 1))
    assert s.rr == pytest.approx(np.full(3, harmonic / m))
    assert s.topk(5) == pytest.approx(np.full(3, 5 / m))
    assert s.auc == pytest.approx(np.full(3, 0.5))
    assert s.rr10 == pytest.approx(np.full(3, sum(1 / r for r in range(1, 11)) / 10))


def test_excluded_products_are_never_negatives() -> None:
    # Product 1 is another positive of the same scene: excluded, so the positive ranks first.
    dist = np.array([[0.5, 0.1, 0.9, 0.8]])
    exclude = np.array([[False, True, False, False]])
    block = M.RankingBlock.build(dist, np.array([0]), exclude)
    assert M.positive_counts(block)[0][0] == 0
    assert M.binary_choice(block, np.random.default_rng(0), draws=50)[0] == 1.0
    assert M.sampled_reciprocal_ranks(block, np.random.default_rng(0), draws=5)[0] == 1.0


def test_bad_blocks_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one negative"):
        M.RankingBlock.build(np.zeros((1, 1)), np.array([0]))
    with pytest.raises(ValueError, match="out of range"):
        M.RankingBlock.build(np.zeros((1, 3)), np.array([3]))
    with pytest.raises(ValueError, match="NaN"):
        M.RankingBlock.build(np.full((1, 3), np.nan), np.array([0]))


def test_per_category_and_pooling() -> None:
    s = M.score_blocks({"Shoes": _perfect(2, 10), "Pants": _reversed(2, 10)}, seed=1)
    out = M.summarize(s, seed=1)
    per = out["per_category"]
    assert per["Shoes"]["n"] == 2 and per["Shoes"]["auc"] == 1.0
    assert per["Pants"]["auc"] == 0.0 and per["Pants"]["mrr"] == pytest.approx(0.1)
    assert out["n_pairs"] == 4
    assert out["auc"] == 0.5
    assert out["mrr"] == pytest.approx((1 + 1 + 0.1 + 0.1) / 4)


def test_same_seed_same_draws_different_seed_other_draws() -> None:
    rng = np.random.default_rng(0)
    block = M.RankingBlock.build(rng.random((30, 40)), rng.integers(0, 40, 30))
    a = M.score_blocks({"Shoes": block}, seed=5)
    b = M.score_blocks({"Shoes": block}, seed=5)
    c = M.score_blocks({"Shoes": block}, seed=6)
    assert np.array_equal(a.auc, b.auc) and np.array_equal(a.rr10, b.rr10)
    assert not np.array_equal(a.auc, c.auc)


def test_bootstrap_interval_contains_estimate() -> None:
    values = np.random.default_rng(1).random(200)
    lo, hi = M.bootstrap_ci(values, seed=0)
    assert lo < values.mean() < hi
    assert hi - lo < 0.2
    assert M.bootstrap_ci(values, seed=0) == (lo, hi)
    assert all(math.isnan(v) for v in M.bootstrap_ci(np.zeros(0)))


def test_relevance_mask_on_hand_made_boxes() -> None:
    # The left half of the image on a 2x2 grid: both left cells are relevant.
    assert M.region_relevance([(0.0, 0.0, 0.5, 1.0)], grid=2).tolist() == [
        True,
        False,
        True,
        False,
    ]
    # Exactly half a cell is not "more than half".
    assert not M.region_relevance([(0.0, 0.0, 0.25, 1.0)], grid=2).any()
    # Two boxes each covering 30% of the top-left cell add up (union) to 60%.
    boxes = [(0.0, 0.0, 0.15, 0.5), (0.15, 0.0, 0.3, 0.5)]
    assert M.region_relevance(boxes, grid=2).tolist() == [True, False, False, False]
    # Overlapping boxes are not counted twice: 40% of the cell, covered by two copies.
    assert not M.region_relevance([(0.0, 0.0, 0.2, 0.5)] * 2, grid=2).any()
    # Row-major numbering on the 7x7 grid: a box on row 6, column 1.
    mask = M.region_relevance([(1 / 7, 6 / 7, 2 / 7, 1.0)])
    assert mask.shape == (49,) and np.flatnonzero(mask).tolist() == [6 * 7 + 1]


def test_attention_hits_and_random_expectation() -> None:
    relevant = np.zeros((2, 4), bool)
    relevant[0, 2] = True
    relevant[1, [0, 1]] = True
    attention = np.array([[0.1, 0.2, 0.6, 0.1], [0.1, 0.2, 0.3, 0.4]])
    assert M.attention_hits(attention, relevant, 1).tolist() == [1.0, 0.0]
    assert M.attention_hits(attention, relevant, 3).tolist() == [1.0, 1.0]
    # 1 relevant of 4: 1/4 for one pick, 3/4 for three; 2 of 4: 1/2 and 1.
    assert M.random_hits(relevant, 1) == pytest.approx([0.25, 0.5])
    assert M.random_hits(relevant, 3) == pytest.approx([0.75, 1.0])
    no_relevant = np.zeros((1, 4), bool)
    out = M.attention_summary(
        np.vstack([attention, attention[:1]]), np.vstack([relevant, no_relevant])
    )
    assert out["n"] == 2  # the scene without a relevant region is left out
    assert out["top1_hit"] == 0.5
    assert out["random_top1_hit"] == pytest.approx(0.375)
    # cells 0, 1 and 2 are each relevant in one of the two scenes: the best fixed one hits 1/2
    assert out["best_fixed_top1_hit"] == 0.5 and out["best_fixed_region"] == 0
