"""Training's settings: the model layer's (paths, backbone, seed) plus training's own knobs.

Read from the same ``CTL_*`` environment variables as every layer; training imports nothing of
the service above it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from model.config import CHECKOUT, ModelSettings, shared_dir

OUTFITS = "mango-outfits"
OUTFITS_ENV = "CTL_OUTFITS_DIR"
"""The environment variable of ``TrainingSettings.outfits_dir`` (named in messages)."""


class TrainingSettings(ModelSettings):
    """``ModelSettings`` plus where the optional stylist outfits live (``CTL_OUTFITS_DIR``;
    by default ``../shared/mango-outfits``, the checkout's when none exists, so messages name
    a path)."""

    outfits_dir: Path = Field(
        default_factory=lambda: shared_dir(OUTFITS) or CHECKOUT.parent / "shared" / OUTFITS
    )

    @property
    def features_dir(self) -> Path:
        """The feature caches' root (``ctl features --cache``)."""
        return self.work_dir / "features"
