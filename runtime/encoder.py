"""The exported encoders under ONNX Runtime: what the service, the batch job and the index
builder run. Imports no torch."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort
from PIL import Image

from runtime.artifacts import (
    PREPROCESS_FILE,
    PRODUCT_FILE,
    SCENE_FILE,
    ArtifactError,
    read_manifest,
)
from runtime.preprocess import PreprocessSpec, resize_image, to_batch
from runtime.sessions import open_session, select_providers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneEmbedding:
    """One scene: global f_s (D,), regions f_i (R, D), attention (C, R) for every category."""

    f_s: np.ndarray
    f_i: np.ndarray
    attention: np.ndarray


@runtime_checkable
class Encoder(Protocol):
    """What the service and the index builder need from an encoder (ONNX or a test fake)."""

    @property
    def categories(self) -> list[str]: ...

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str: ...

    @property
    def providers(self) -> list[str]: ...

    @property
    def precision(self) -> str:
        """The exported encoders' number format: fp32 or int8."""
        ...

    @property
    def lanes(self) -> int:
        """How many ``embed_scenes`` calls may run at once, each on its own cores."""
        ...

    @property
    def input_size(self) -> int:
        """The side of the square model input (photos need not be decoded any larger)."""
        ...

    def prepare(self, image: Image.Image) -> Image.Image:
        """The per-image part of preprocessing (resizing), thread-safe: the service runs it
        beside the model (in a lane's batch job, or in worker threads). ``embed_*`` accept its
        output as well as any other image."""
        ...

    def embed_scenes(self, images: Sequence[Image.Image]) -> list[SceneEmbedding]: ...

    def embed_products(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class OnnxEncoder:
    """Scene and product encoders from an artifacts directory, run by ONNX Runtime."""

    def __init__(
        self,
        scene: ort.InferenceSession,
        product: ort.InferenceSession,
        spec: PreprocessSpec,
        manifest: dict[str, Any],
        lanes: Sequence[ort.InferenceSession] = (),
    ) -> None:
        self._scene = scene
        self._product = product
        self.spec = spec
        self.manifest = manifest
        # Scene sessions with fewer threads each, for calls that overlap another one: two
        # single-threaded calls at once encode more images/s than one call on all threads,
        # whose threads wait on each other (docs/performance.md).
        self._lanes = list(lanes)
        self._free_lanes = list(lanes)
        self._running = 0
        self._lock = threading.Lock()

    @classmethod
    def from_artifacts(
        cls, artifacts_dir: Path, device: str = "auto", threads: int = 0, lanes: int = 1
    ) -> OnnxEncoder:
        """Verify the checksums, then open the sessions on the best available provider.

        ``threads``: ONNX Runtime threads of a call that runs alone (0: all cores). ``lanes``
        > 1 on a CPU adds that many scene sessions sharing the cores, for overlapping calls.
        """
        artifacts_dir = Path(artifacts_dir)
        manifest = read_manifest(artifacts_dir)
        providers = select_providers(device)
        cpu_lanes = lanes if lanes > 1 and providers == ["CPUExecutionProvider"] else 0
        lane_threads = max(1, (threads or os.cpu_count() or 1) // max(cpu_lanes, 1))
        try:
            spec = PreprocessSpec.load(artifacts_dir / PREPROCESS_FILE)
            scene = open_session(artifacts_dir / SCENE_FILE, providers, threads)
            product = open_session(artifacts_dir / PRODUCT_FILE, providers, threads)
            extra = [
                open_session(artifacts_dir / SCENE_FILE, providers, lane_threads)
                for _ in range(cpu_lanes)
            ]
        except Exception as exc:
            raise ArtifactError(f"cannot load the encoders from {artifacts_dir}: {exc}") from exc
        enc = cls(scene, product, spec, manifest, extra)
        enc._check_io()
        log.info(
            "encoders %s (%s, %s, %d categories) loaded from %s on %s, %d lane(s)",
            enc.version,
            manifest["backbone"],
            enc.precision,
            len(enc.categories),
            artifacts_dir,
            enc.providers,
            enc.lanes,
        )
        return enc

    def _check_io(self) -> None:
        scene_out = [o.name for o in self._scene.get_outputs()]
        product_out = [o.name for o in self._product.get_outputs()]
        if scene_out != ["f_s", "f_i", "attention"] or product_out != ["f_p"]:
            raise ArtifactError(
                f"unexpected encoder outputs: scene {scene_out}, product {product_out}; "
                "expected scene [f_s, f_i, attention] and product [f_p]"
            )
        for sess in (self._scene, self._product):
            if [i.name for i in sess.get_inputs()] != ["image"]:
                raise ArtifactError("encoders must take one input named 'image'")

    @property
    def categories(self) -> list[str]:
        return list(self.manifest["categories"])

    @property
    def dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def precision(self) -> str:
        return str(self.manifest.get("precision", "fp32"))  # exports before int8 were fp32

    @property
    def providers(self) -> list[str]:
        """The providers the sessions really run on (CUDA falls back to CPU when unusable)."""
        return list(self._scene.get_providers())

    @property
    def lanes(self) -> int:
        return max(1, len(self._lanes))

    @property
    def input_size(self) -> int:
        return self.spec.size

    def run_scene(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Preprocessed batch (N, 3, S, S) -> f_s (N, D), f_i (N, R, D), attention (N, C, R).

        Thread-safe: a call that runs alone gets the main session (all its threads), one that
        overlaps others gets a free lane (ONNX Runtime sessions may be run concurrently, so
        the main session also takes any call beyond the lanes).
        """
        with self._lock:
            self._running += 1
            lane = self._free_lanes.pop() if self._running > 1 and self._free_lanes else None
        try:
            f_s, f_i, att = (lane or self._scene).run(None, {"image": x})
        finally:
            with self._lock:
                self._running -= 1
                if lane is not None:
                    self._free_lanes.append(lane)
        return f_s, f_i, att

    def run_product(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed batch (N, 3, S, S) -> f_p (N, D)."""
        (f_p,) = self._product.run(None, {"image": x})
        return np.asarray(f_p, np.float32)

    def prepare(self, image: Image.Image) -> Image.Image:
        # embed_* take the result without resizing it again (it already has the input size).
        return resize_image(image, self.spec)

    def warm_up(self, batch: int) -> None:
        """Run every session once, the scene ones at ``batch`` images: the first run of a
        session at a size allocates its memory, which made the first requests after a start
        or a reload slow (docs/performance.md)."""
        x = np.zeros((batch, 3, self.spec.size, self.spec.size), np.float32)
        for session in (self._scene, *self._lanes):
            session.run(None, {"image": x})
        self._product.run(None, {"image": x[:1]})

    def embed_scenes(self, images: Sequence[Image.Image]) -> list[SceneEmbedding]:
        if not images:
            return []
        f_s, f_i, att = self.run_scene(to_batch(images, self.spec))
        return [SceneEmbedding(f_s[n], f_i[n], att[n]) for n in range(len(images))]

    def embed_products(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.run_product(to_batch(images, self.spec))
