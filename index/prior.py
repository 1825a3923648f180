"""The popularity prior of the ranking: products ordered by d* - lambda * log(1 + popularity).

On a few thousand training pairs the model alone ranks a category's top 10 no better than its
most popular products; the prior adds what the counts know (issue 29: lambda chosen on val).
``ctl export`` writes the run's popularity (training pairs per product) beside the encoders and
names it with lambda in the manifest (``"prior": {"weight", "file"}``), so that the service,
``ctl batch-score`` and ``ctl evaluate`` rank the same way. Unknown products count 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.artifacts import MANIFEST_FILE


@dataclass(frozen=True)
class PopularityPrior:
    """lambda (``weight``) and each product's popularity (``counts``: id -> count)."""

    weight: float
    counts: Mapping[str, float]

    def bonus(self, ids: Sequence[str]) -> np.ndarray:
        """lambda * log(1 + popularity) of each product (float32): subtracted from its d*."""
        pop = np.array([float(self.counts.get(i, 0.0)) for i in ids], np.float64)
        return (self.weight * np.log1p(np.maximum(pop, 0.0))).astype(np.float32)

    @classmethod
    def from_artifacts(cls, artifacts_dir: Path) -> PopularityPrior | None:
        """The prior the artifacts' manifest names; ``None`` without one (or lambda 0)."""
        path = Path(artifacts_dir) / MANIFEST_FILE
        if not path.is_file():
            return None
        spec = json.loads(path.read_text()).get("prior") or {}
        if not spec.get("weight"):
            return None
        counts = json.loads((Path(artifacts_dir) / spec["file"]).read_text())
        return cls(float(spec["weight"]), counts)
