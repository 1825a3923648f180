"""CTL heads: shapes and unit norms, attention, the d* identity, and load_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.ctl import CTLModel, load_run

CATS = ["Shoes", "Pants", "Skirts"]


@pytest.fixture
def model() -> CTLModel:
    torch.manual_seed(0)
    return CTLModel(global_dim=24, local_dim=12, categories=CATS, dim=16, hidden=32).eval()


def _scene(model: CTLModel, b: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return model.scene_embeddings(torch.randn(b, 24), torch.randn(b, 49, 12))


def test_head_shapes_and_unit_norms(model: CTLModel) -> None:
    f_s, f_i, keys = _scene(model)
    f_p = model.product_embedding(torch.randn(5, 24))
    assert f_s.shape == (5, 16) and f_p.shape == (5, 16)
    assert f_i.shape == (5, 49, 16) and keys.shape == (5, 49, 16)
    for t in (f_s, f_i, keys, f_p, model.category_embeddings()):
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]))


def test_attention_sums_to_one(model: CTLModel) -> None:
    _, _, keys = _scene(model)
    att = model.attention(keys, torch.tensor([0, 1, 2, 0, 1]))
    assert att.shape == (5, 49) and (att >= 0).all()
    torch.testing.assert_close(att.sum(-1), torch.ones(5))
    att_all = model.attention_all(keys)
    assert att_all.shape == (5, 3, 49)
    torch.testing.assert_close(att_all.sum(-1), torch.ones(5, 3))
    torch.testing.assert_close(
        att_all[:, 1], model.attention(keys, torch.ones(5, dtype=torch.long))
    )


def paper_d_star(
    f_s: torch.Tensor, f_i: torch.Tensor, att: torch.Tensor, f_p: torch.Tensor
) -> torch.Tensor:
    """The paper's d* = (||f_s - f_p||² + sum_i a_i ||f_i - f_p||²) / 2, each (B,), for scenes
    (B, ...) against products f_p (B, D): what ``query_vector``'s inner product must equal."""
    d_global = ((f_s - f_p) ** 2).sum(-1)
    d_local = (att * ((f_i - f_p[:, None, :]) ** 2).sum(-1)).sum(-1)
    return (d_global + d_local) / 2


def test_d_star_is_an_inner_product(model: CTLModel) -> None:
    f_s, f_i, keys = _scene(model)
    f_p = model.product_embedding(torch.randn(5, 24))
    att = model.attention(keys, torch.tensor([2, 2, 1, 0, 1]))
    q = model.query_vector(f_s, f_i, att)
    torch.testing.assert_close(paper_d_star(f_s, f_i, att, f_p), 2 - (q * f_p).sum(-1))
    q_all = model.query_vector(f_s, f_i, model.attention_all(keys))
    torch.testing.assert_close(q_all[torch.arange(5), torch.tensor([2, 2, 1, 0, 1])], q)


def test_load_run_round_trip(model: CTLModel, tmp_path: Path) -> None:
    cfg = {"model": model.config(), "backbone": "tiny", "backbone_weights": None}
    torch.save({"model": model.state_dict(), "config": cfg}, tmp_path / "checkpoint.pt")
    loaded, config = load_run(tmp_path)
    assert config["backbone"] == "tiny" and loaded.categories == CATS
    g = torch.randn(3, 24)
    torch.testing.assert_close(loaded.product_embedding(g), model.product_embedding(g))
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt not found"):
        load_run(tmp_path / "missing")
