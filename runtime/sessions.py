"""ONNX Runtime sessions: which providers to use and how a session is opened, for every
runner of an ONNX graph (the encoders, the feature cache's backbone)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from runtime.artifacts import ArtifactError

log = logging.getLogger(__name__)

CPU = ["CPUExecutionProvider"]


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


def open_session(
    path: Path, providers: Sequence[str] = CPU, threads: int = 0
) -> ort.InferenceSession:
    """``path`` opened on ``providers`` with ``threads`` intra-op threads (0: all cores)."""
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads sleep instead of spinning, leaving the cores to decoding and HTTP.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
