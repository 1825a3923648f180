"""Per-epoch CTL triplets: (cropped scene, its product, a same-category negative).

The negative is a catalog product of the positive's category that is neither the positive
nor any product paired with that scene (a scene can hold several labelled products).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Example:
    """One CTL training example: a scene-crop row of the feature cache and its product row."""

    row: int
    scene: str
    product: int
    category: int


class TripletSampler:
    """Draws one same-category negative per example, fresh every epoch."""

    def __init__(
        self,
        examples: Sequence[Example],
        product_categories: Sequence[int] | np.ndarray,
        scene_products: Mapping[str, set[int]],
    ) -> None:
        """``product_categories[j]``: category of product row j (-1: never a negative);
        ``scene_products[scene]``: every product row paired with that scene, in any split."""
        cats = np.asarray(product_categories)
        self.pools = {int(c): np.flatnonzero(cats == c) for c in np.unique(cats) if c >= 0}
        self.scene_products = scene_products
        self.examples = [e for e in examples if len(self.candidates(e))]
        self.skipped = len(examples) - len(self.examples)

    def excluded(self, ex: Example) -> set[int]:
        return {ex.product, *self.scene_products.get(ex.scene, ())}

    def candidates(self, ex: Example) -> np.ndarray:
        """All valid negatives of ``ex`` (product rows), sorted."""
        pool = self.pools.get(ex.category, np.zeros(0, np.int64))
        return np.setdiff1d(pool, np.fromiter(self.excluded(ex), np.int64), assume_unique=True)

    def epoch(self, rng: np.random.Generator) -> np.ndarray:
        """(N, 3) int64 rows ``[scene_row, positive, negative]`` in a shuffled order."""
        out = np.empty((len(self.examples), 3), np.int64)
        for i, ex in enumerate(self.examples):
            pool, bad = self.pools[ex.category], self.excluded(ex)
            neg = int(pool[rng.integers(len(pool))])
            while neg in bad:  # the excluded set is tiny next to the pool: a few redraws at most
                neg = int(pool[rng.integers(len(pool))])
            out[i] = (ex.row, ex.product, neg)
        return out[rng.permutation(len(out))]
