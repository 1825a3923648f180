"""The baselines ``ctl evaluate`` ranks beside the model, as scorers of the same pairs."""

from __future__ import annotations

import numpy as np

from training.evaluation.pairs import CategoryPairs
from training.evaluation.scoring import Embedded, Scorer

BASELINES = ("random", "popularity", "imagenet", "global_only")
NOTES = {
    "global_only": "the same model without its local/attention branch: d_global only",
    "imagenet": "squared L2 distance between the raw frozen-backbone global vectors",
    "popularity": "products ranked by their pair count in the run's training split",
    "random": "a uniformly random ranking, computed exactly in expectation",
}


def scorers(scenes: Embedded, products: Embedded, popularity: np.ndarray) -> dict[str, Scorer]:
    """Each baseline's distances (n pairs, m products; lower = better)."""

    def global_only(g: CategoryPairs) -> np.ndarray:
        f_s = scenes.emb[g.crops].astype(np.float64)
        return 2.0 - 2.0 * f_s @ products.emb[g.products].T.astype(np.float64)

    def imagenet(g: CategoryPairs) -> np.ndarray:
        a = scenes.raw[g.crops].astype(np.float64)
        b = products.raw[g.products].astype(np.float64)
        return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T

    def by_popularity(g: CategoryPairs) -> np.ndarray:
        return np.broadcast_to(-popularity[g.products], (g.pairs.size, g.products.size))

    def random(g: CategoryPairs) -> np.ndarray:
        return np.zeros((g.pairs.size, g.products.size))

    return {
        "global_only": global_only,
        "imagenet": imagenet,
        "popularity": by_popularity,
        "random": random,
    }
