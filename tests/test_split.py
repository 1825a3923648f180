"""The scene split: disjoint, deterministic, with the requested fractions."""

from __future__ import annotations

from collections import Counter

import pytest

from training.split import split_scenes

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
