"""The CTL heads (Kang et al. 2019, Sec. 4) on top of frozen backbone features.

Global and local embeddings, category-guided attention over the scene's regions, and the
distances d_global, d_local and d* = (d_global + d_local) / 2. Every embedding is unit length
and the attention sums to 1, so d*(s, p) = 2 - <f_s + sum_i a_i f_i, f_p>: ranking the products
of one category is an inner-product search with one query vector per (scene, category).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """g(Θ) of ``members`` models batched: Linear-BN-ReLU-Dropout-Linear-L2Norm, member k
    applied to ``x[k]`` (members, ..., in) along the last axis. One batched matmul serves every
    member; each keeps its own weights, initialization and batch-norm statistics."""

    def __init__(
        self, in_dim: int, dim: int, hidden: int, dropout: float, members: int = 1
    ) -> None:
        super().__init__()
        self.members, self.in_dim, self.hidden = members, in_dim, hidden
        self.w1 = nn.Parameter(torch.empty(members, hidden, in_dim))
        self.b1 = nn.Parameter(torch.empty(members, hidden))
        self.bn = nn.BatchNorm1d(members * hidden)
        self.drop = nn.Dropout(dropout)
        self.w2 = nn.Parameter(torch.empty(members, dim, hidden))
        self.b2 = nn.Parameter(torch.empty(members, dim))
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):  # nn.Linear's, member by member
            for k in range(members):
                nn.init.kaiming_uniform_(w[k], a=math.sqrt(5))
                nn.init.uniform_(b[k], -1 / math.sqrt(w.shape[-1]), 1 / math.sqrt(w.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, lead = x.shape[0], x.shape[1:-1]
        h = torch.baddbmm(
            self.b1[:, None, :], x.reshape(n, -1, x.shape[-1]), self.w1.transpose(1, 2)
        )
        m = h.shape[1]  # batch norm per member and channel: members side by side as channels
        h = self.bn(h.transpose(0, 1).reshape(m, n * self.hidden)).reshape(m, n, self.hidden)
        h = self.drop(F.relu(h.transpose(0, 1)))
        out = torch.baddbmm(self.b2[:, None, :], h, self.w2.transpose(1, 2))
        return F.normalize(out, dim=-1).reshape(n, *lead, -1)


class CTLModel(nn.Module):
    """Scene and product embeddings, category attention and the CTL distances, of an ensemble
    of ``members`` models trained as one.

    Each member has its own global and local heads; the attention (key head and category
    embeddings) is one for all, so that the scene has one heatmap and the ensemble stays one
    query. ``member_*`` give each member's own embeddings (training, per-member metrics);
    ``product_embedding`` and ``scene_embeddings`` give the ensemble's: the members' unit
    vectors concatenated and scaled by 1/sqrt(members), unit length again, so that
    d* = 2 - <q, f_p> is the mean of the members' d* (and d_global, d_local the mean of
    theirs). With one member both are the paper's model.
    """

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
        members: int = 1,
    ) -> None:
        super().__init__()
        if not categories:
            raise ValueError("CTLModel needs at least one category")
        if members < 1:
            raise ValueError("CTLModel needs at least one member")
        self.categories = list(categories)
        self.global_dim, self.local_dim, self.dim = global_dim, local_dim, dim
        self.members = members
        self.input_drop = nn.Dropout(input_dropout)
        self.g_global = Head(global_dim, dim, hidden, dropout, members)  # g(Θg): scenes, products
        self.g_local = Head(local_dim, dim, hidden, dropout, members)  # g(Θl): style of regions
        self.g_key = Head(local_dim, dim, hidden, dropout)  # g(Θl^): attention keys, shared
        self.category_emb = nn.Parameter(torch.randn(len(self.categories), dim) * 0.1)
        # Per-dimension standardization of the backbone features (set from training data): the
        # concatenated taps differ in scale, and unscaled the largest ones drown the others.
        self.register_buffer("global_mean", torch.zeros(global_dim))
        self.register_buffer("global_std", torch.ones(global_dim))
        self.register_buffer("local_mean", torch.zeros(local_dim))
        self.register_buffer("local_std", torch.ones(local_dim))

    @property
    def out_dim(self) -> int:
        """The ensemble's embedding size: members x dim."""
        return self.members * self.dim

    @torch.no_grad()
    def set_input_stats(self, global_feats: torch.Tensor, local_feats: torch.Tensor) -> None:
        """Standardize inputs with the mean/std of training features ((N, G) and (M, L))."""
        self.global_mean.copy_(global_feats.mean(0))
        self.global_std.copy_(global_feats.std(0) + 1e-3)
        self.local_mean.copy_(local_feats.mean(0))
        self.local_std.copy_(local_feats.std(0) + 1e-3)

    def _g(self, g: torch.Tensor) -> torch.Tensor:
        return self.input_drop((g - self.global_mean) / self.global_std)

    def _r(self, regions: torch.Tensor) -> torch.Tensor:
        return self.input_drop((regions - self.local_mean) / self.local_std)

    def member_products(self, g: torch.Tensor) -> torch.Tensor:
        """Each member's f_p (M, B, D) from its own product features (M, B, G)."""
        return self.g_global(self._g(g))

    def member_scenes(
        self, g: torch.Tensor, regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each member's f_s (M, B, D), f_i (M, B, R, D) and the shared head's keys f^_i
        (M, B, R, D) from its own scene features (M, B, G) and (M, B, R, L)."""
        regions = self._r(regions)
        keys = self.g_key(regions.reshape(1, -1, *regions.shape[2:])).reshape(
            *regions.shape[:-1], -1
        )
        return self.g_global(self._g(g)), self.g_local(regions), keys

    def _joined(self, x: torch.Tensor) -> torch.Tensor:
        """(M, ..., D) members -> (..., M*D) / sqrt(M): one unit vector per item."""
        return torch.movedim(x, 0, -2).flatten(-2) / math.sqrt(self.members)

    def _each(self, x: torch.Tensor) -> torch.Tensor:
        return x[None].expand(self.members, *x.shape)

    def product_embedding(self, g: torch.Tensor) -> torch.Tensor:
        """The ensemble's f_p (B, M*D) from product global features (B, G)."""
        return self._joined(self.member_products(self._each(g)))

    def scene_embeddings(
        self, g: torch.Tensor, regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ensemble's f_s (B, M*D), f_i (B, R, M*D) and the keys f^_i (B, R, D)."""
        r = self._r(regions)
        f_s = self.g_global(self._g(self._each(g)))
        f_i = self.g_local(self._each(r))
        keys = self.g_key(r[None])[0]
        return self._joined(f_s), self._joined(f_i), keys

    def category_embeddings(self) -> torch.Tensor:
        """e^_c (C, D), unit length."""
        return F.normalize(self.category_emb, dim=-1)

    def attention(self, keys: torch.Tensor, cat_idx: torch.Tensor) -> torch.Tensor:
        """a (..., R) = softmax_i(-||f^_i - e^_c||²) for each scene's target category: keys
        (..., R, D), cat_idx (...)."""
        e = self.category_embeddings()[cat_idx]  # (..., D)
        return torch.softmax(-((keys - e[..., None, :]) ** 2).sum(-1), dim=-1)

    def attention_all(self, keys: torch.Tensor) -> torch.Tensor:
        """a (B, C, R) for every category at once (what the exported scene encoder returns)."""
        e = self.category_embeddings()  # (C, D)
        d2 = ((keys[:, None, :, :] - e[None, :, None, :]) ** 2).sum(-1)  # (B, C, R)
        return torch.softmax(-d2, dim=-1)

    @staticmethod
    def query_vector(f_s: torch.Tensor, f_i: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """q = f_s + sum_i a_i f_i: (..., D) for att (..., R) with f_i (..., R, D); (B, C, D)
        for att (B, C, R) with f_i (B, R, D)."""
        if att.dim() == f_i.dim() - 1:
            return f_s + torch.einsum("...r,...rd->...d", att, f_i)
        return f_s[:, None, :] + torch.einsum("bcr,brd->bcd", att, f_i)

    def member_slice(self, x: Any, k: int) -> Any:
        """Member k's own vectors (unit length) out of the ensemble's (..., M*D)."""
        return x[..., k * self.dim : (k + 1) * self.dim] * math.sqrt(self.members)

    def config(self) -> dict[str, Any]:
        """What ``from_config`` needs to rebuild this model."""
        return {
            "global_dim": self.global_dim,
            "local_dim": self.local_dim,
            "categories": self.categories,
            "dim": self.dim,
            "hidden": self.g_global.hidden,
            "dropout": self.g_global.drop.p,
            "input_dropout": self.input_drop.p,
            "members": self.members,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> CTLModel:
        keys = ("global_dim", "local_dim", "categories", "dim", "hidden", "dropout")
        return cls(**{k: cfg[k] for k in (*keys, "input_dropout", "members") if k in cfg})


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
    result = model.load_state_dict(_batched_heads(ckpt["model"]), strict=False)
    stats = {"global_mean", "global_std", "local_mean", "local_std"}
    if result.unexpected_keys or set(result.missing_keys) - stats:
        raise RuntimeError(f"{ckpt_path}: checkpoint does not match its config: {result}")
    model.eval()
    return model, config


def _batched_heads(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint of a single model from before members (``fc1``/``fc2`` Linear layers per
    head) in the batched heads' layout; newer checkpoints as they are."""
    out = {}
    for key, value in state.items():
        head, _, name = key.rpartition(".fc")
        if head and name in ("1.weight", "1.bias", "2.weight", "2.bias"):
            key = f"{head}.{'w' if name.endswith('weight') else 'b'}{name[0]}"
            value = value[None]
        out[key] = value
    return out
