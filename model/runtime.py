"""The exported encoders under ONNX Runtime: what the service and the index builder run.

Imports no torch. Loading verifies every file against the manifest checksums first, so a
tampered or half-copied artifact directory is refused instead of serving wrong embeddings.
"""

from __future__ import annotations

import hashlib
import json
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

from model.preprocess import PreprocessSpec, resize_image, to_batch

log = logging.getLogger(__name__)

SCENE_FILE = "scene.onnx"
PRODUCT_FILE = "product.onnx"
PREPROCESS_FILE = "preprocess.json"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (SCENE_FILE, PRODUCT_FILE, PREPROCESS_FILE)
MANIFEST_KEYS = ("version", "backbone", "categories", "embedding_dim", "grid", "files")


class ArtifactError(Exception):
    """The artifact directory is missing, incomplete, tampered with or inconsistent."""


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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (index embeddings can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(artifacts_dir: Path) -> dict[str, Any]:
    """The manifest, after checking that it is complete and that every file matches its sha256."""
    artifacts_dir = Path(artifacts_dir)
    path = artifacts_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{path} not found: {artifacts_dir} is not an artifacts directory "
            "(create one with 'ctl export --run RUN_DIR --out DIR')"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks the keys {missing}")
    files: dict[str, str] = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise ArtifactError(f"{path} lists no checksum for {name}")
    for name, expected in files.items():
        file = artifacts_dir / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing (listed in {path})")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(
                f"checksum mismatch for {file}: manifest says sha256 {expected}, file has "
                f"{actual}; the artifact was modified or corrupted, re-run 'ctl export'"
            )
    return dict(manifest)


def select_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for ``device`` (auto | cpu | cuda), best first."""
    if device not in ("auto", "cpu", "cuda"):
        raise ArtifactError(f"unknown device {device!r}: use auto, cpu or cuda")
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if has_cuda and device != "cpu" and hasattr(ort, "preload_dlls"):
        # The gpu extra installs CUDA and cuDNN as PyPI packages, which the loader does not
        # search; preloading them is what lets the CUDA provider start without a system CUDA.
        try:
            ort.preload_dlls()
        except Exception as exc:  # a missing library shows again as the CPU fallback warned of
            log.warning("onnxruntime.preload_dlls() failed: %s", exc)
    if device == "cuda" and not has_cuda:
        raise ArtifactError(
            f"device 'cuda' requested but onnxruntime offers only {available} "
            "(install onnxruntime-gpu on a machine with an NVIDIA GPU)"
        )
    cuda = ["CUDAExecutionProvider"] if has_cuda and device != "cpu" else []
    return [*cuda, "CPUExecutionProvider"]


def gpu_fallback_warning(providers_in_use: Sequence[str]) -> str | None:
    """Why a GPU build of ONNX Runtime runs on the CPU, or ``None``: without it a GPU install
    on a machine whose GPU is unusable serves from the CPU and nobody notices."""
    cuda = "CUDAExecutionProvider"
    if cuda in ort.get_available_providers() and cuda not in providers_in_use:
        return (
            "onnxruntime-gpu is installed but the encoders run on the CPU: no usable CUDA GPU "
            "(or CTL_DEVICE=cpu)"
        )
    return None


def _session(path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads sleep instead of spinning, leaving the cores to decoding and HTTP.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


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
            scene = _session(artifacts_dir / SCENE_FILE, providers, threads)
            product = _session(artifacts_dir / PRODUCT_FILE, providers, threads)
            extra = [
                _session(artifacts_dir / SCENE_FILE, providers, lane_threads)
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
