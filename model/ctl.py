"""The CTL heads (Kang et al. 2019, Sec. 4) on top of frozen backbone features.

Global and local embeddings, category-guided attention over the scene's regions, and the
distances d_global, d_local and d* = (d_global + d_local) / 2. Every embedding is unit length
and the attention sums to 1, so d*(s, p) = 2 - <f_s + sum_i a_i f_i, f_p>: ranking the products
of one category is an inner-product search with one query vector per (scene, category).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """g(Θ): Linear-BN-ReLU-Dropout-Linear-L2Norm, applied to the last axis of any shape."""

    def __init__(self, in_dim: int, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = self.fc1(x.reshape(-1, x.shape[-1]))
        h = self.drop(F.relu(self.bn(h)))
        return F.normalize(self.fc2(h), dim=-1).reshape(*lead, -1)


class CTLModel(nn.Module):
    """Scene and product embeddings, category attention and the CTL distances."""

    global_mean: torch.Tensor
    global_std: torch.Tensor
    local_mean: torch.Tensor
    local_std: torch.Tensor

    def __init__(
        self,
        global_dim: int,
        local_dim: int,
        categories: Sequence[str],
        dim: int = 128,
        hidden: int = 256,
        dropout: float = 0.5,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not categories:
            raise ValueError("CTLModel needs at least one category")
        self.categories = list(categories)
        self.global_dim, self.local_dim, self.dim = global_dim, local_dim, dim
        self.input_drop = nn.Dropout(input_dropout)
        self.g_global = Head(global_dim, dim, hidden, dropout)  # g(Θg): scenes and products
        self.g_local = Head(local_dim, dim, hidden, dropout)  # g(Θl): style of each region
        self.g_key = Head(local_dim, dim, hidden, dropout)  # g(Θl^): attention keys
        self.category_emb = nn.Parameter(torch.randn(len(self.categories), dim) * 0.1)
        # Per-dimension standardization of the backbone features (set from training data): the
        # concatenated taps differ in scale, and unscaled the largest ones drown the others.
        self.register_buffer("global_mean", torch.zeros(global_dim))
        self.register_buffer("global_std", torch.ones(global_dim))
        self.register_buffer("local_mean", torch.zeros(local_dim))
        self.register_buffer("local_std", torch.ones(local_dim))

    @torch.no_grad()
    def set_input_stats(self, global_feats: torch.Tensor, local_feats: torch.Tensor) -> None:
        """Standardize inputs with the mean/std of training features ((N, G) and (M, L))."""
        self.global_mean.copy_(global_feats.mean(0))
        self.global_std.copy_(global_feats.std(0) + 1e-3)
        self.local_mean.copy_(local_feats.mean(0))
        self.local_std.copy_(local_feats.std(0) + 1e-3)

    def _g(self, g: torch.Tensor) -> torch.Tensor:
        return self.input_drop((g - self.global_mean) / self.global_std)

    def product_embedding(self, g: torch.Tensor) -> torch.Tensor:
        """f_p (B, D) from product global features (B, G)."""
        return self.g_global(self._g(g))

    def scene_embeddings(
        self, g: torch.Tensor, regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f_s (B, D), f_i (B, R, D) and the keys f^_i (B, R, D) of a scene."""
        regions = self._r(regions)
        return self.g_global(self._g(g)), self.g_local(regions), self.g_key(regions)

    def _r(self, regions: torch.Tensor) -> torch.Tensor:
        return self.input_drop((regions - self.local_mean) / self.local_std)

    def region_style(self, regions: torch.Tensor) -> torch.Tensor:
        """f_i (..., R, D) of any region grid (a scene's, a product photo's), as a scene's."""
        return self.g_local(self._r(regions))

    def category_embeddings(self) -> torch.Tensor:
        """e^_c (C, D), unit length."""
        return F.normalize(self.category_emb, dim=-1)

    def attention(self, keys: torch.Tensor, cat_idx: torch.Tensor) -> torch.Tensor:
        """a (B, R) = softmax_i(-||f^_i - e^_c||²) for each scene's target category."""
        e = self.category_embeddings()[cat_idx]  # (B, D)
        return torch.softmax(-((keys - e[:, None, :]) ** 2).sum(-1), dim=-1)

    def attention_all(self, keys: torch.Tensor) -> torch.Tensor:
        """a (B, C, R) for every category at once (what the exported scene encoder returns)."""
        e = self.category_embeddings()  # (C, D)
        d2 = ((keys[:, None, :, :] - e[None, :, None, :]) ** 2).sum(-1)  # (B, C, R)
        return torch.softmax(-d2, dim=-1)

    @staticmethod
    def query_vector(f_s: torch.Tensor, f_i: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """q = f_s + sum_i a_i f_i: (B, D) for att (B, R), (B, C, D) for att (B, C, R)."""
        if att.dim() == 2:
            return f_s + torch.einsum("br,brd->bd", att, f_i)
        return f_s[:, None, :] + torch.einsum("bcr,brd->bcd", att, f_i)

    def config(self) -> dict[str, Any]:
        """What ``from_config`` needs to rebuild this model."""
        return {
            "global_dim": self.global_dim,
            "local_dim": self.local_dim,
            "categories": self.categories,
            "dim": self.dim,
            "hidden": self.g_global.fc1.out_features,
            "dropout": self.g_global.drop.p,
            "input_dropout": self.input_drop.p,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> CTLModel:
        keys = ("global_dim", "local_dim", "categories", "dim", "hidden", "dropout")
        return cls(**{k: cfg[k] for k in (*keys, "input_dropout") if k in cfg})


def concat_ensemble(
    queries: Sequence[torch.Tensor], products: Sequence[torch.Tensor], weights: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One query and one product vector for an ensemble of models, so that it stays one search.

    ``queries[k]`` (..., D_k) and ``products[k]`` (..., D_k) are model k's q and f_p; the query
    parts are scaled by ``weights[k]`` and concatenated, the product parts concatenated as they
    are: <q, p> = sum_k w_k <q_k, f_p,k> = sum_k w_k (2 - d*_k), so one inner-product search
    ranks by the weighted sum of the models' d*.
    """
    if not (len(queries) == len(products) == len(weights)) or not queries:
        raise ValueError("concat_ensemble needs as many queries, products and weights, >= 1")
    q = torch.cat([w * qk for w, qk in zip(weights, queries, strict=True)], dim=-1)
    return q, torch.cat(list(products), dim=-1)


def load_run(run_dir: Path | str) -> tuple[CTLModel, dict[str, Any]]:
    """The best model of a training run (eval mode) and its run config.

    The config is the run's ``config.json``: ``config["model"]`` holds the heads' keys
    (``global_dim``, ``categories``, ...); ``backbone`` and ``backbone_weights`` rebuild the
    matching ``model.backbones.build_backbone``.
    """
    run_dir = Path(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path} not found: is {run_dir} a finished 'ctl train' run?")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    config: dict[str, Any] = dict(ckpt["config"])
    model = CTLModel.from_config(config["model"])
    # Runs from before input standardization lack its buffers: their identity defaults apply.
    result = model.load_state_dict(ckpt["model"], strict=False)
    stats = {"global_mean", "global_std", "local_mean", "local_std"}
    if result.unexpected_keys or set(result.missing_keys) - stats:
        raise RuntimeError(f"{ckpt_path}: checkpoint does not match its config: {result}")
    model.eval()
    return model, config
