"""Backbones: shapes, frozen weights, the clear resnet50 error, and ONNX export of ``tiny``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbones import BackboneError, build_backbone


def test_tiny_shapes_and_frozen() -> None:
    bb = build_backbone("tiny")
    x = torch.randn(3, 3, bb.spec.size, bb.spec.size)
    g, r = bb(x)
    assert g.shape == (3, bb.global_dim)
    assert r.shape == (3, bb.grid * bb.grid, bb.local_dim)
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training  # BatchNorm statistics stay frozen


def test_tiny_is_deterministic() -> None:
    a, b = build_backbone("tiny"), build_backbone("tiny")
    x = torch.randn(2, 3, a.spec.size, a.spec.size)
    assert torch.equal(a(x)[0], b(x)[0])
    assert a.key() == b.key()


def test_efficientnet_lite0_layers() -> None:
    bb = build_backbone("efficientnet_lite0")
    g, r = bb(torch.zeros(1, 3, 224, 224))
    assert (bb.global_dim, bb.local_dim) == (1280 + 320 + 112 + 80, 80 + 112)
    assert r.shape == (1, 49, 192) and g.shape == (1, 1792)
    assert bb.key() != build_backbone("tiny").key()


def test_resnet50_without_weights_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(BackboneError, match=r"hub/checkpoints/resnet50-\*\.pth"):
        build_backbone("resnet50")
    with pytest.raises(BackboneError, match=r"nope\.pth not found"):
        build_backbone("resnet50", tmp_path / "nope.pth")


def test_unknown_backbone() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")


def test_tiny_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    bb = build_backbone("tiny")
    x = torch.randn(2, 3, bb.spec.size, bb.spec.size)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        bb,
        (x,),
        str(path),
        input_names=["image"],
        output_names=["g", "r"],
        dynamic_axes={"image": {0: "b"}},
        dynamo=False,
    )
    g, r = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    ref_g, ref_r = bb(x)
    np.testing.assert_allclose(g, ref_g.numpy(), atol=1e-5)
    np.testing.assert_allclose(r, ref_r.numpy(), atol=1e-5)
