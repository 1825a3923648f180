"""The index layer's settings: the model's, and how catalogs are indexed and searched."""

from __future__ import annotations

from runtime.config import RuntimeSettings


class IndexSettings(RuntimeSettings):
    """``RuntimeSettings`` plus the index knobs (``CTL_ANN_THRESHOLD``, ...)."""

    ann_threshold: int = 50_000
    max_k: int = 100  # products per category and scene, the service's and `ctl batch-score`'s
    rerank_candidates: int = 500  # approximate-index candidates re-scored exactly (recall@10)
