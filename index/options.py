"""The flags the index's commands share (``ctl index``, ``ctl catalog``, ``ctl batch-score``,
``ctl serve``), declared once; each command's options extend them (``runtime/options.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic_settings import BaseSettings

from index.config import IndexSettings
from runtime.options import Options, option


class IndexOptions(Options):
    """The flag of every command on an index: which artifacts (encoders and index/)."""

    settings_class: ClassVar[type[BaseSettings]] = IndexSettings

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
