"""Training's settings: the model layer's (paths, backbone, seed) plus training's own knobs.

Read from the same ``CTL_*`` environment variables as every layer; training imports nothing of
the service above it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from model.config import ModelSettings

OUTFITS_ENV = "CTL_OUTFITS_DIR"
"""The environment variable of ``TrainingSettings.outfits_dir`` (named in messages)."""


def _default_outfits_dir() -> Path:
    """``../shared/mango-outfits`` beside the checkout or the cwd (the first that exists; the
    checkout's one when none does, so messages name a path)."""
    candidates = [
        base.parent / "shared" / "mango-outfits"
        for base in (Path(__file__).resolve().parent.parent, Path.cwd())
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


class TrainingSettings(ModelSettings):
    """``ModelSettings`` plus where the optional stylist outfits live (``CTL_OUTFITS_DIR``)."""

    outfits_dir: Path = Field(default_factory=_default_outfits_dir)

    @property
    def features_dir(self) -> Path:
        """The feature caches' root (``ctl features --cache``)."""
        return self.work_dir / "features"
