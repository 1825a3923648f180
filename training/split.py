"""Deterministic train/val/test split by scene, so no scene is seen in two splits."""

from __future__ import annotations

import random
from collections.abc import Iterable

SPLITS = ("train", "val", "test")


def split_scenes(
    scenes: Iterable[str], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, str]:
    """Scene -> ``"train"|"val"|"test"``; depends only on the set of scenes and ``seed``."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    unique = sorted(set(scenes))
    random.Random(seed).shuffle(unique)
    n = len(unique)
    n_train = round(fractions[0] * n)
    n_val = round((fractions[0] + fractions[1]) * n) - n_train
    out: dict[str, str] = {}
    for i, scene in enumerate(unique):
        out[scene] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


UNUSED = "unused"
"""A training scene left out by ``keep_train_fraction``: in no split, never seen by the run."""


def keep_train_fraction(split: dict[str, str], fraction: float, seed: int) -> dict[str, str]:
    """``split`` with only a seeded ``fraction`` of its training scenes kept (the rest
    ``UNUSED``; val and test as they were). A smaller fraction keeps a subset of a larger one's
    scenes for the same seed, so a learning curve adds data rather than swapping it."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the training fraction must be in (0, 1], got {fraction}")
    train = sorted(s for s, k in split.items() if k == "train")
    random.Random(seed).shuffle(train)
    dropped = set(train[max(1, round(fraction * len(train))) :]) if train else set()
    return {s: UNUSED if s in dropped else k for s, k in split.items()}
