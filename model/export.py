"""``ctl export --run RUN_DIR --out ARTIFACTS_DIR``: the encoders the service runs, as ONNX.

Two graphs with a dynamic batch axis, backbone and heads fused: ``scene.onnx`` (image -> f_s,
f_i, attention for every category) and ``product.onnx`` (image -> f_p), plus the preprocessing
spec, the popularity prior of the ranking (``popularity.json`` and lambda, read by
``index/prior.py``) and a manifest with checksums. The new artifacts are assembled and checked
against torch in a temp directory beside ``ARTIFACTS_DIR`` and swapped in atomically, so a crash
leaves the old ones serving; the index kept inside ``ARTIFACTS_DIR`` is carried over.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# OpenMP threads spin while they wait, which made exports on a busy 2-core machine several times
# slower; passive waiting must be chosen before torch starts its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from PIL import Image
from torch import nn

from model.backbones import Backbone, BackboneError, build_backbone
from model.ctl import CTLModel, load_run
from model.quantize import quantize_encoder, to_fp16
from runtime.artifacts import (
    MANIFEST_FILE,
    PREPROCESS_FILE,
    PRODUCT_FILE,
    SCENE_FILE,
    ArtifactError,
    sha256_file,
)
from runtime.config import RuntimeSettings
from runtime.encoder import OnnxEncoder
from runtime.options import Options, option
from runtime.preprocess import to_batch

log = logging.getLogger(__name__)

OPSET = 17
PRIOR_FILE = "popularity.json"
"""The ranking's popularity prior beside the encoders (``index.prior.PRIOR_FILE``)."""
PARITY_TOL = {"fp32": 1e-4, "fp16": 1e-2}
"""Largest |ONNX Runtime - torch| on random images; fp16 keeps about 3 significant digits
(1.4e-3 measured on efficientnet_lite0's outputs)."""
PRECISIONS = ("fp32", "int8", "fp16")
INT8_MIN_COSINE = {"f_s": 0.9, "f_i": 0.85, "attention": 0.95, "f_p": 0.9}
"""int8's parity, per output: the smallest cosine to torch's vectors (every f_s, f_p, single
region f_i and category's attention distribution) on held-out real training images; it
catches a broken quantization, the val AUC bar judges accuracy. On 48 val crops and products
of a 5-epoch run the minima were f_s 0.970, f_i 0.895, attention 0.990, f_p 0.975 (means 0.994,
0.994, 0.999, 0.993); another seed's export reached f_p 0.936 on its 16 held-out products."""

Calibration = tuple[list[Image.Image], list[Image.Image]]
"""Scene crops and product photos of the training split (``training.calibration``)."""


class _Fused(nn.Module):
    """The frozen backbone and the heads in one module: one ONNX graph."""

    def __init__(self, backbone: Backbone, model: CTLModel) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode, and with it the heads'


class SceneEncoder(_Fused):
    """image -> (f_s, f_i, attention over the regions for every category)."""

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g, regions = self.backbone(image)
        f_s, f_i, keys = self.model.scene_embeddings(g, regions)
        return f_s, f_i, self.model.attention_all(keys)


class ProductEncoder(_Fused):
    """image -> f_p."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        g, _ = self.backbone(image)
        return self.model.product_embedding(g)


def export_onnx(module: nn.Module, size: int, outputs: list[str], path: Path) -> None:
    """``module`` (one ``image`` input, a dynamic batch) as an ONNX graph: the encoders, and
    the backbone the feature cache runs under ONNX Runtime."""
    example = torch.zeros(2, 3, size, size)
    axes = {name: {0: "batch"} for name in ["image", *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def check_parity(
    backbone: Backbone, model: CTLModel, enc: OnnxEncoder, images: np.ndarray
) -> float:
    """Largest |ONNX Runtime - torch| over every output for ``images`` (N, 3, S, S)."""
    x = torch.from_numpy(images)
    with torch.no_grad():
        want = [*SceneEncoder(backbone, model)(x), ProductEncoder(backbone, model)(x)]
    got = [*enc.run_scene(images), enc.run_product(images)]
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).astype(np.float64)


def min_cosine(
    backbone: Backbone, model: CTLModel, enc: OnnxEncoder, scenes: np.ndarray, products: np.ndarray
) -> dict[str, float]:
    """Smallest cosine between ONNX Runtime's and torch's vectors, per output: f_s, f_i (each
    region), attention (each category's distribution) on ``scenes``; f_p on ``products``."""
    with torch.no_grad():
        want = [t.numpy() for t in SceneEncoder(backbone, model)(torch.from_numpy(scenes))]
        want.append(ProductEncoder(backbone, model)(torch.from_numpy(products)).numpy())
    got = [*enc.run_scene(scenes), enc.run_product(products)]
    out = {}
    for name, g, w in zip(("f_s", "f_i", "attention", "f_p"), got, want, strict=True):
        g, w = _rows(g), _rows(w)
        norms = np.linalg.norm(g, axis=1) * np.linalg.norm(w, axis=1)
        out[name] = float(((g * w).sum(axis=1) / np.maximum(norms, 1e-12)).min())
    return out


def export(
    backbone: Backbone,
    model: CTLModel,
    out_dir: Path,
    run: str | None = None,
    run_metrics: dict[str, Any] | None = None,
    prior: tuple[float, dict[str, int]] | None = None,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Write the artifacts of (backbone, model) to ``out_dir`` atomically; returns the manifest.

    ``prior``: lambda and each product's popularity, ranked by d* - lambda log(1 + popularity).
    ``precision`` int8 quantizes both encoders (``model.quantize``) on ``calibration``; fp16
    (for GPUs) converts their weights and arithmetic, inputs and outputs staying float32.
    """
    if precision not in PRECISIONS:
        raise ArtifactError(f"unknown precision {precision!r}: use {' or '.join(PRECISIONS)}")
    if precision == "int8" and not (
        calibration and len(calibration[0]) >= 4 and len(calibration[1]) >= 4
    ):
        raise ArtifactError("int8 export needs at least 4 calibration scene crops and products")
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    backbone.eval()
    model.eval()
    # A mount point (a Docker volume) cannot be swapped: assemble inside it instead.
    mounted = out_dir.is_dir() and os.path.ismount(out_dir)
    tmp = (
        out_dir if mounted else out_dir.parent
    ) / f".{out_dir.name}.export-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        # int8: the last quarter of the calibration images (at most 16) is kept out of the
        # calibration to check parity on: quantization ranges fit real photos, not noise.
        held = min(16, len(calibration[0]) // 4, len(calibration[1]) // 4) if calibration else 0
        batches = parity = None
        if precision == "int8" and calibration is not None:
            scenes, products = (to_batch(images, backbone.spec) for images in calibration)
            batches = (scenes[: len(scenes) - held], products[: len(products) - held])
            parity = (scenes[len(scenes) - held :], products[len(products) - held :])
        manifest = _write(backbone, model, tmp, run, run_metrics, prior, precision, batches)
        enc = OnnxEncoder.from_artifacts(tmp, device="cpu")
        if parity is None:
            images = np.random.default_rng(0).normal(
                size=(3, 3, backbone.spec.size, backbone.spec.size)
            )
            err = check_parity(backbone, model, enc, images.astype(np.float32))
            if err > PARITY_TOL[precision]:
                raise ArtifactError(
                    f"ONNX Runtime differs from torch by {err:.2e} > {PARITY_TOL[precision]}"
                )
            log.info("ONNX Runtime matches torch within %.2e", err)
        else:
            cosines = min_cosine(backbone, model, enc, *parity)
            if any(cosines[k] < tol for k, tol in INT8_MIN_COSINE.items()):
                raise ArtifactError(
                    f"int8 encoders differ from torch: smallest cosines {cosines} on {held} "
                    f"held-out calibration images (at least {INT8_MIN_COSINE} required)"
                )
            log.info("int8 encoders match torch: smallest cosines %s", cosines)
        if mounted:
            _replace_files(tmp, out_dir)
        else:
            _swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported model %s (%s) to %s", manifest["version"], backbone.name, out_dir)
    return manifest


def _write(
    backbone: Backbone,
    model: CTLModel,
    out: Path,
    run: str | None,
    run_metrics: dict[str, Any] | None,
    prior: tuple[float, dict[str, int]] | None,
    precision: str,
    calibration: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    size = backbone.spec.size
    started = time.perf_counter()
    export_onnx(SceneEncoder(backbone, model), size, ["f_s", "f_i", "attention"], out / SCENE_FILE)
    export_onnx(ProductEncoder(backbone, model), size, ["f_p"], out / PRODUCT_FILE)
    log.info("ONNX graphs written in %.1f s", time.perf_counter() - started)
    if precision == "int8" and calibration is not None:
        started = time.perf_counter()
        for name, images in ((SCENE_FILE, calibration[0]), (PRODUCT_FILE, calibration[1])):
            fp32 = out / f"fp32-{name}"
            os.replace(out / name, fp32)
            quantize_encoder(fp32, out / name, images)
            fp32.unlink()
        log.info(
            "quantized to int8 on %d + %d images in %.1f s",
            *map(len, calibration),
            time.perf_counter() - started,
        )
    if precision == "fp16":
        for name in (SCENE_FILE, PRODUCT_FILE):
            to_fp16(out / name)
    backbone.spec.save(out / PREPROCESS_FILE)
    names = [SCENE_FILE, PRODUCT_FILE, PREPROCESS_FILE]
    if prior is not None:
        (out / PRIOR_FILE).write_text(json.dumps(prior[1], sort_keys=True) + "\n")
        names.append(PRIOR_FILE)
    files = {n: sha256_file(out / n) for n in names}
    digest = hashlib.sha256("".join(files[n] for n in sorted(files)).encode()).hexdigest()[:12]
    manifest = {
        "version": f"{digest}-{precision}",
        "precision": precision,
        "backbone": backbone.name,
        "backbone_weights": backbone.weights_id,
        "categories": list(model.categories),
        "embedding_dim": model.out_dim,
        "grid": backbone.grid,
        "regions": backbone.grid * backbone.grid,
        "input_size": size,
        "files": files,
        "prior": {"weight": prior[0], "file": PRIOR_FILE} if prior is not None else None,
        "run": run,
        "run_metrics": run_metrics or {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    for name in (*files, MANIFEST_FILE):
        with open(out / name, "rb") as f:
            os.fsync(f.fileno())
    return manifest


def _rename_exchange(a: Path, b: Path) -> None:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def _replace_files(new: Path, out_dir: Path) -> None:
    """File by file, the manifest last: a crash in between leaves files that fail their
    checksums (refused on load with a clear error) rather than a silently mixed model."""
    log.warning("%s is a mount point: replacing its artifacts file by file", out_dir)
    for name in (SCENE_FILE, PRODUCT_FILE, PREPROCESS_FILE, PRIOR_FILE, MANIFEST_FILE):
        if (new / name).is_file():
            os.replace(new / name, out_dir / name)
        elif name == PRIOR_FILE:
            (out_dir / name).unlink(missing_ok=True)


def _swap_in(new: Path, out_dir: Path) -> None:
    """Make ``new`` the content of ``out_dir`` in one atomic step.

    Whatever else ``out_dir`` holds (the index) is hard-linked into ``new`` first; every writer
    there replaces files instead of editing them, so the links stay valid.
    """
    if not out_dir.exists():
        os.rename(new, out_dir)
        return
    for entry in out_dir.iterdir():
        if entry.name in (SCENE_FILE, PRODUCT_FILE, PREPROCESS_FILE, PRIOR_FILE, MANIFEST_FILE):
            continue
        if entry.is_dir():
            shutil.copytree(entry, new / entry.name, copy_function=os.link, symlinks=True)
        else:
            os.link(entry, new / entry.name)
    _rename_exchange(new, out_dir)


Calibrate = Callable[[Path, Path, int], Calibration]
"""(run dir, data dir, n) -> n training scene crops and n product photos: ``ctl`` passes
``training.calibration.calibration_images`` (this layer cannot import training)."""

DEFAULT_PRECISION = "fp32"
CALIBRATION_IMAGES = 128


def export_run(
    run_dir: Path,
    out_dir: Path,
    weights: Path | None = None,
    prior_weight: float | None = None,
    precision: str = "fp32",
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Export the best checkpoint of a training run, with its popularity prior: the run's
    ``popularity.json`` and lambda (``prior_weight``, else the run's ``--prior-weight``)."""
    model, config = load_run(run_dir)
    backbone_weights = weights or config.get("backbone_weights")
    backbone = build_backbone(config["backbone"], backbone_weights)
    if (backbone.global_dim, backbone.local_dim) != (model.global_dim, model.local_dim):
        raise ArtifactError(
            f"run {run_dir} was trained on features of size {model.global_dim}/{model.local_dim},"
            f" backbone {backbone.name} gives {backbone.global_dim}/{backbone.local_dim}"
        )
    metrics_path = Path(run_dir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if prior_weight is None:
        prior_weight = float(config.get("train", {}).get("prior_weight", 0.0))
    popularity = Path(run_dir) / PRIOR_FILE
    prior = None
    if prior_weight > 0 and popularity.is_file():
        prior = (prior_weight, json.loads(popularity.read_text()))
    run = str(Path(run_dir).resolve())
    return export(backbone, model, out_dir, run, metrics, prior, precision, calibration)


class ExportOptions(Options, prog="ctl export"):
    run: Path = option(help="training run directory")
    out: Path = option(help="artifacts directory", setting="artifacts_dir")
    backbone_weights: Path | None = option(None, "backbone weights file (default: the run's)")
    prior_weight: float | None = option(
        None, "lambda of the popularity prior (default: the run's --prior-weight; 0: none)"
    )
    precision: str = option(
        DEFAULT_PRECISION,
        "int8: static quantization calibrated on the run's training images (CPUs); "
        "fp16: half-precision weights and arithmetic (GPUs)",
        choices=PRECISIONS,
    )
    data: Path | None = option(None, "data directory for int8 calibration (default: the run's)")
    calibration_images: int = option(
        CALIBRATION_IMAGES, "scene crops and as many product photos for int8 calibration"
    )


def main(argv: Sequence[str] | None = None, calibrate: Calibrate | None = None) -> int:
    """``ctl export``: prints the manifest on success."""
    args = ExportOptions.parse(sys.argv[1:] if argv is None else argv)
    try:
        calibration = None
        if args.precision == "int8":
            if calibrate is None:
                raise ArtifactError("int8 export needs the training data: run it as 'ctl export'")
            data = args.data or Path(
                load_run(args.run)[1].get("data") or RuntimeSettings().data_dir
            )
            calibration = calibrate(args.run, data, args.calibration_images)
        manifest = export_run(
            args.run,
            args.out,
            args.backbone_weights,
            args.prior_weight,
            args.precision,
            calibration,
        )
    except (ArtifactError, BackboneError, FileNotFoundError, KeyError, OSError) as exc:
        sys.stderr.write(f"ctl export: error: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
    return 0
