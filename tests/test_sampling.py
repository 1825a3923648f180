"""Triplet sampling: the negatives' invariants hold over many draws."""

from __future__ import annotations

import numpy as np

from training.sampling import Example, TripletSampler

# Products 0-5 are category 0, 6-9 category 1, 10 has no category (never a negative).
PRODUCT_CATS = [0] * 6 + [1] * 4 + [-1]
SCENE_PRODUCTS = {"a": {0, 1, 6}, "b": {2}, "c": {7, 8, 9}, "d": {3}}
EXAMPLES = [
    Example(0, "a", 0, 0),
    Example(0, "a", 1, 0),  # same crop, second product of the scene
    Example(1, "a", 6, 1),
    Example(2, "b", 2, 0),
    Example(3, "c", 7, 1),
    Example(4, "d", 3, 0),
]


def test_negatives_invariants_over_many_draws() -> None:
    sampler = TripletSampler(EXAMPLES, PRODUCT_CATS, SCENE_PRODUCTS)
    by_row_pos = {(e.row, e.product): e for e in EXAMPLES}
    rng = np.random.default_rng(0)
    seen: dict[tuple[int, int], set[int]] = {}
    for _ in range(300):
        triplets = sampler.epoch(rng)
        assert len(triplets) == len(EXAMPLES)
        for row, pos, neg in triplets:
            ex = by_row_pos[(int(row), int(pos))]
            assert PRODUCT_CATS[neg] == ex.category  # same category
            assert neg != pos and neg not in SCENE_PRODUCTS[ex.scene]  # not paired with the scene
            seen.setdefault((ex.row, ex.product), set()).add(int(neg))
    # Every valid negative gets drawn: the sampler is not stuck on a few.
    for ex in EXAMPLES:
        assert seen[(ex.row, ex.product)] == set(sampler.candidates(ex).tolist())
    assert seen[(1, 6)] == {7, 8, 9}


def test_example_without_any_negative_is_skipped() -> None:
    scenes = {**SCENE_PRODUCTS, "c": {6, 7, 8, 9}}  # scene c holds every category-1 product
    sampler = TripletSampler([*EXAMPLES[:4], Example(3, "c", 7, 1)], PRODUCT_CATS, scenes)
    assert sampler.skipped == 1 and len(sampler.examples) == 4


def test_epochs_are_deterministic_per_seed_and_shuffled() -> None:
    sampler = TripletSampler(EXAMPLES, PRODUCT_CATS, SCENE_PRODUCTS)
    a = sampler.epoch(np.random.default_rng(5))
    assert np.array_equal(a, sampler.epoch(np.random.default_rng(5)))
    rng = np.random.default_rng(1)
    orders = {tuple(sampler.epoch(rng)[:, 1]) for _ in range(20)}
    assert len(orders) > 1
