"""Training's settings: the model layer's (paths, backbone, seed) plus training's own knobs.

Read from the same ``CTL_*`` environment variables as every layer; training imports nothing of
the service above it.
"""

from __future__ import annotations

from pathlib import Path

from runtime.config import RuntimeSettings


class TrainingSettings(RuntimeSettings):
    """``RuntimeSettings`` plus where training keeps its feature caches."""

    @property
    def features_dir(self) -> Path:
        """The feature caches' root (``ctl features --cache``)."""
        return self.work_dir / "features"
