"""model/export.py: ONNX parity with torch for every backbone, checksums, atomic replacement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STL_DIR
from factories import make_tiny_run
from PIL import Image

from index.store import CategoryData, IndexStore
from model.backbones import Backbone, build_backbone
from model.ctl import CTLModel, load_run
from model.export import INT8_MIN_COSINE, check_parity, export, export_run, main, min_cosine
from runtime.artifacts import ArtifactError
from runtime.encoder import OnnxEncoder
from runtime.preprocess import to_batch

CATEGORIES = ["Shoes", "Pants", "Shirts & Tops"]


def _images(n: int) -> list[Image.Image]:
    """Real scene photos when the shared data is here, else noise with a gradient."""
    real = sorted((STL_DIR / "images" / "scenes").glob("*.jpg"))[:n]
    if len(real) == n:
        return [Image.open(p).convert("RGB") for p in real]
    rng = np.random.default_rng(0)
    grad = np.linspace(0, 255, 96)[None, :, None]
    return [
        Image.fromarray(
            np.clip(rng.normal(128, 40, (96, 96, 3)) + grad - 128, 0, 255).astype("uint8")
        )
        for _ in range(n)
    ]


def _backbone(name: str, tmp_path: Path) -> Backbone:
    if name != "resnet50":
        return build_backbone(name)
    # No ImageNet weights here: the same architecture with random weights, given as a file.
    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path / "resnet50-random.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return build_backbone("resnet50", path)


@pytest.mark.parametrize("name", ["tiny", "efficientnet_lite0", "efficientnet_lite2", "resnet50"])
def test_onnx_matches_torch(name: str, tmp_path: Path) -> None:
    backbone = _backbone(name, tmp_path)
    torch.manual_seed(0)
    model = CTLModel(backbone.global_dim, backbone.local_dim, CATEGORIES).eval()
    manifest = export(backbone, model, tmp_path / "artifacts")
    assert manifest["backbone"] == name
    assert manifest["categories"] == CATEGORIES
    images = _images(3)
    x = to_batch(images, backbone.spec)  # batch 3: the export traced batch 2, the axis is dynamic
    enc = OnnxEncoder.from_artifacts(tmp_path / "artifacts", device="cpu")
    assert check_parity(backbone, model, enc, x) < 1e-4
    (emb,) = enc.embed_scenes(images[:1])
    assert emb.f_s.shape == (128,)
    assert emb.f_i.shape == (49, 128)
    assert emb.attention.shape == (len(CATEGORIES), 49)
    assert enc.embed_products(images).shape == (3, 128)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("run"), CATEGORIES)


@pytest.fixture()
def artifacts(tiny_run: Path, tmp_path: Path) -> Path:
    export_run(tiny_run, tmp_path / "artifacts")
    return tmp_path / "artifacts"


@pytest.mark.parametrize("victim", ["scene.onnx", "product.onnx", "preprocess.json"])
def test_tampered_artifact_is_refused(artifacts: Path, victim: str) -> None:
    path = artifacts / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"checksum mismatch for .*{victim}"):
        OnnxEncoder.from_artifacts(artifacts)


def test_missing_artifact_is_refused(artifacts: Path) -> None:
    (artifacts / "product.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"product\.onnx is missing"):
        OnnxEncoder.from_artifacts(artifacts)


def test_reexport_swaps_atomically_and_keeps_the_index(
    artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (artifacts / "index").mkdir()
    (artifacts / "index" / "CURRENT").write_text("v1\n")
    old = json.loads((artifacts / "manifest.json").read_text())["version"]
    other_run = make_tiny_run(tmp_path / "run2", CATEGORIES, seed=1)

    def crash(a: Path, b: Path) -> None:
        raise OSError("simulated crash before the swap")

    monkeypatch.setattr("model.export._rename_exchange", crash)
    with pytest.raises(OSError, match="simulated"):
        export_run(other_run, artifacts)
    assert OnnxEncoder.from_artifacts(artifacts).version == old
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    monkeypatch.undo()
    new = export_run(other_run, artifacts)["version"]
    assert new != old
    assert OnnxEncoder.from_artifacts(artifacts).version == new
    assert (artifacts / "index" / "CURRENT").read_text() == "v1\n"


def test_export_into_a_mount_point(
    artifacts: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Docker volume cannot be renamed: the files are replaced in place, the index stays."""
    (artifacts / "index").mkdir()
    (artifacts / "index" / "CURRENT").write_text("v1\n")
    monkeypatch.setattr("os.path.ismount", lambda p: Path(p) == artifacts.resolve())
    new = export_run(make_tiny_run(tmp_path / "run2", CATEGORIES, seed=1), artifacts)["version"]
    assert OnnxEncoder.from_artifacts(artifacts).version == new
    assert (artifacts / "index" / "CURRENT").read_text() == "v1\n"
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "index",
        "manifest.json",
        "preprocess.json",
        "product.onnx",
        "scene.onnx",
    ]


def test_cli(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--run", str(tiny_run), "--out", str(tmp_path / "a")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert printed["run"] == str(tiny_run.resolve())
    assert printed["run_metrics"]["backbone"] == "tiny"
    shutil.rmtree(tiny_run.parent / "missing", ignore_errors=True)
    assert main(["--run", str(tiny_run.parent / "missing"), "--out", str(tmp_path / "b")]) == 1
    assert "checkpoint.pt not found" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_members_and_the_popularity_prior_are_exported(tmp_path: Path) -> None:
    """A 2-member run exports 2 x dim wide embeddings (parity checked inside ``export``) and its
    popularity with lambda; the index loaded from those artifacts ranks with that prior; a
    re-export without the prior leaves no stale popularity behind."""
    backbone = build_backbone("tiny")
    torch.manual_seed(0)
    model = CTLModel(backbone.global_dim, backbone.local_dim, CATEGORIES, dim=16, members=2)
    run = tmp_path / "run"
    run.mkdir()
    config = {"backbone": "tiny", "backbone_weights": None, "model": model.eval().config()}
    config["train"] = {"prior_weight": 0.2}
    torch.save({"model": model.state_dict(), "config": config}, run / "checkpoint.pt")
    (run / "popularity.json").write_text(json.dumps({"Shoes-1-0": 4}))
    artifacts = tmp_path / "artifacts"
    manifest = export_run(run, artifacts)
    assert manifest["embedding_dim"] == 32
    assert manifest["prior"] == {"weight": 0.2, "file": "popularity.json"}
    assert "popularity.json" in manifest["files"]
    enc = OnnxEncoder.from_artifacts(artifacts)  # the checksums hold
    assert enc.dim == 32
    store = IndexStore.for_artifacts(artifacts)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    store.publish(enc.version, 32, {"Shoes": CategoryData(["Shoes-1-0", "b", "c"], emb)}, 1000)
    bonus = store.load().category("Shoes").bonus
    assert bonus is not None and bonus.tolist() == pytest.approx([0.2 * np.log(5), 0.0, 0.0])
    assert export_run(run, artifacts, prior_weight=0.0)["prior"] is None
    assert not (artifacts / "popularity.json").exists()
    assert store.load().category("Shoes").bonus is None


def test_int8_export_keeps_parity_and_records_its_precision(tiny_run: Path, tmp_path: Path) -> None:
    images = _images(12)
    calibration = (images[:8], images[4:])
    manifest = export_run(tiny_run, tmp_path / "int8", precision="int8", calibration=calibration)
    assert manifest["precision"] == "int8"
    assert manifest["version"].endswith("-int8")
    enc = OnnxEncoder.from_artifacts(tmp_path / "int8", device="cpu")
    assert enc.precision == "int8"
    assert enc.version == manifest["version"]
    # The graphs really are quantized (QDQ pairs around the backbone), the heads are not.
    import onnx

    graph = onnx.load(str(tmp_path / "int8" / "scene.onnx")).graph
    quantized = {n.name for n in graph.node if n.op_type == "DequantizeLinear"}
    assert quantized
    heads = [n for n in graph.node if n.name.startswith("/g_") and n.op_type in ("Gemm", "MatMul")]
    assert heads and all(n.input[1] in {i.name for i in graph.initializer} for n in heads)
    model, _ = load_run(tiny_run)
    backbone = build_backbone("tiny")
    x = to_batch(images[:4], backbone.spec)
    cosines = min_cosine(backbone, model, enc, x, x)
    assert all(cosines[k] >= tol for k, tol in INT8_MIN_COSINE.items())
    fp32 = export_run(tiny_run, tmp_path / "fp32")
    assert fp32["precision"] == "fp32" and fp32["version"].endswith("-fp32")


def test_int8_export_fails_its_parity_check_when_quantization_breaks_the_model(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _images(8)
    # Calibrated on black images, real photos' activations are clipped: the parity check on the
    # held-out quarter (the last 2, real) must catch it.
    bad = [Image.new("RGB", im.size) for im in images[:6]] + images[6:]
    # The tiny backbone is mostly pooling and survives that at 0.97: a stricter tolerance.
    monkeypatch.setitem(INT8_MIN_COSINE, "f_i", 0.99)
    with pytest.raises(ArtifactError, match="int8 encoders differ from torch"):
        export_run(tiny_run, tmp_path / "bad", precision="int8", calibration=(bad, bad))
    assert not (tmp_path / "bad").exists()


def test_int8_needs_calibration(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ArtifactError, match="calibration"):
        export_run(tiny_run, tmp_path / "a", precision="int8")
    assert main(["--run", str(tiny_run), "--out", str(tmp_path / "a"), "--precision", "int8"]) == 1
    assert "int8 export needs" in capsys.readouterr().err
    calls = []

    def calibrate(run: Path, data: Path, n: int) -> tuple[list[Image.Image], list[Image.Image]]:
        calls.append((run, n))
        return _images(n), _images(n)

    argv = ["--run", str(tiny_run), "--out", str(tmp_path / "b"), "--precision", "int8"]
    assert main([*argv, "--data", str(tmp_path), "--calibration-images", "6"], calibrate) == 0
    assert calls == [(tiny_run, 6)]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["precision"] == "int8"


def test_fp16_export_for_gpus(tiny_run: Path, tmp_path: Path) -> None:
    import onnx

    manifest = export_run(tiny_run, tmp_path / "fp16", precision="fp16")
    assert manifest["precision"] == "fp16" and manifest["version"].endswith("-fp16")
    graph = onnx.load(str(tmp_path / "fp16" / "scene.onnx")).graph
    assert {i.data_type for i in graph.initializer} >= {onnx.TensorProto.FLOAT16}
    enc = OnnxEncoder.from_artifacts(tmp_path / "fp16", device="cpu")
    model, _ = load_run(tiny_run)
    backbone = build_backbone("tiny")
    err = check_parity(backbone, model, enc, to_batch(_images(3), backbone.spec))
    assert 0 < err < 1e-2  # not bit-identical to fp32, within fp16's tolerance
