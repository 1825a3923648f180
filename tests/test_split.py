"""The scene split: disjoint, deterministic, with the requested fractions."""

from __future__ import annotations

from collections import Counter

import pytest

from training.split import UNUSED, keep_train_fraction, split_scenes

SCENES = [f"scene{i:04d}" for i in range(1000)]


def test_every_scene_in_exactly_one_split_with_fractions() -> None:
    split = split_scenes(SCENES + SCENES[:50], seed=3)  # duplicates: a scene with several pairs
    assert set(split) == set(SCENES)
    assert Counter(split.values()) == {"train": 800, "val": 100, "test": 100}


def test_deterministic_and_order_independent() -> None:
    a = split_scenes(SCENES, seed=7)
    assert a == split_scenes(list(reversed(SCENES)), seed=7)
    assert a != split_scenes(SCENES, seed=8)


def test_other_fractions() -> None:
    counts = Counter(split_scenes(SCENES[:200], (0.5, 0.25, 0.25), seed=0).values())
    assert counts == {"train": 100, "val": 50, "test": 50}


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.05, -0.05)])
def test_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="fractions"):
        split_scenes(SCENES, fractions, seed=0)  # type: ignore[arg-type]


def test_train_fraction_keeps_val_and_test_and_nests() -> None:
    split = split_scenes(SCENES, seed=0)
    half = keep_train_fraction(split, 0.5, seed=1)
    eighth = keep_train_fraction(split, 0.125, seed=1)
    assert Counter(half.values()) == {"train": 400, UNUSED: 400, "val": 100, "test": 100}
    assert Counter(eighth.values())["train"] == 100
    for s, k in split.items():
        if k != "train":
            assert half[s] == eighth[s] == k  # val and test untouched
    kept = {s for s, k in eighth.items() if k == "train"}
    assert kept <= {s for s, k in half.items() if k == "train"}  # more data adds scenes
    assert keep_train_fraction(split, 0.5, seed=1) == half
    assert keep_train_fraction(split, 0.5, seed=2) != half
    assert keep_train_fraction(split, 1.0, seed=5) == split
    assert Counter(keep_train_fraction(split, 1e-6, seed=0).values())["train"] == 1


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_train_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        keep_train_fraction(split_scenes(SCENES, seed=0), fraction, seed=0)
