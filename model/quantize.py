"""Lower-precision versions of an exported encoder: static int8 (ONNX Runtime's quantization
tools) for CPUs, fp16 for GPUs.

QDQ format, per-channel int8 weights, uint8 activations whose ranges come from calibration
images (MinMax). Only the backbone (the nodes the exporter named under ``/backbone/``) is
quantized; the heads stay in fp32:
they are a small share of the time (two 1792->256->128 layers and the attention on 7x7
regions) and quantizing them cost accuracy (docs/performance.md has the figures). Imports no
torch.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

log = logging.getLogger(__name__)

BACKBONE_PREFIX = "/backbone/"
"""Node-name prefix of the backbone in the fused graphs (``_Fused.backbone``)."""
CALIBRATION_BATCH = 8


class _Batches(CalibrationDataReader):
    """Calibration images (N, 3, S, S) in batches, as the encoder's ``image`` input; with
    ``set_range`` (ONNX Runtime's strided calibration) only the batches of that range."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches(0, len(self))

    def __len__(self) -> int:
        return -(-len(self._images) // CALIBRATION_BATCH)

    def _batches(self, first: int, end: int) -> Iterator[dict[str, np.ndarray]]:
        for b in range(first, end):
            yield {"image": self._images[b * CALIBRATION_BATCH : (b + 1) * CALIBRATION_BATCH]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._iter = self._batches(start_index, min(end_index, len(self)))


def head_nodes(path: Path) -> list[str]:
    """Names of the nodes after the backbone (heads, attention, normalization) in a graph."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if not n.name.startswith(BACKBONE_PREFIX)]


def quantize_encoder(fp32: Path, out: Path, images: np.ndarray, keep_heads: bool = True) -> None:
    """Write the int8 version of the encoder ``fp32`` to ``out``, calibrated on ``images``
    (preprocessed, (N, 3, S, S) float32); with ``keep_heads`` the heads stay in fp32."""
    if len(images) == 0:
        raise ValueError("int8 quantization needs calibration images")
    with tempfile.TemporaryDirectory(prefix="ctl-quantize-") as tmp:
        # Shape inference and constant folding first: the exporter computes the backbone's
        # "same" padding at run time (Shape, Slice, Pad), which int8 would run in float between
        # dequantize and quantize steps, slower than fp32; folded, the pads join the convs.
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(
            str(pre),
            str(out),
            _Batches(np.ascontiguousarray(images, np.float32)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=head_nodes(pre) if keep_heads else [],
            calibrate_method=CalibrationMethod.MinMax,
            # Ranges folded in batch by batch: every activation of 128 images at once would
            # take gigabytes (the calibrator keeps all of them until it computes the ranges).
            extra_options={"CalibStridedMinMax": 1},
        )
    log.info("quantized %s to int8 (%s)", fp32.name, "heads in fp32" if keep_heads else "all")


def to_fp16(path: Path) -> None:
    """Convert the encoder at ``path`` to fp16 in place; its input and outputs stay float32,
    so callers (and the manifest's interface check) see no difference."""
    converted = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    onnx.save(converted, str(path))
