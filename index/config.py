"""The index layer's settings: the model's, and how catalogs are indexed and searched; and the
flags its commands share (``ctl index``, ``ctl catalog``, ``ctl batch-score``, ``ctl serve``)."""

from __future__ import annotations

from pathlib import Path

from runtime.config import RuntimeSettings
from runtime.options import Options, option


class IndexSettings(RuntimeSettings):
    """``RuntimeSettings`` plus the index knobs (``CTL_ANN_THRESHOLD``, ...)."""

    ann_threshold: int = 50_000
    max_k: int = 100  # products per category and scene, the service's and `ctl batch-score`'s
    rerank_candidates: int = 500  # approximate-index candidates re-scored exactly (recall@10)


class IndexOptions(Options, settings=IndexSettings):
    """The flag of every command on an index: which artifacts (encoders and index/)."""

    artifacts: Path = option(help="artifacts directory from 'ctl export'", setting="artifacts_dir")


class EncoderOptions(IndexOptions):
    """The flags of the commands that embed images and index them."""

    ann_threshold: int = option(
        help="categories with at least this many products get an IVF index",
        setting="ann_threshold",
    )
    device: str = option(
        help="where the encoders run", setting="device", choices=("auto", "cpu", "cuda")
    )
    threads: int = option(help="ONNX Runtime threads (0: all)", setting="inference_threads")
