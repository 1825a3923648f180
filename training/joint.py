"""Outfits as a second training domain for the CTL heads: composed scenes, interleaved with STL.

Each composed scene (an outfit minus one item, ``training.outfit_features``) is a CTL example
like an STL crop: the held-out item is the positive, a product of its category outside the
outfit the negative, and d* runs through the same scene tower (global, regions, category
attention). Batches of the two domains alternate (joint training, not pretrain-then-finetune).

Domain statistics: composed scenes on a plain background and the retailer's photos differ from
street photos in every feature's mean and spread. With ``domain_norm``, each outfit array is
mapped per dimension onto the first two moments of its STL counterpart (compositions onto STL
scene crops, outfit photos onto STL product photos) before the heads, whose own standardization
(fit on STL) then sees both domains z-scored by their own statistics. Serving sees only the STL
domain, so the exported model is unchanged by this.

Attention: the composer knows which of the 7x7 regions the other items cover, so attention can
be told to look at items rather than at the background (``attention_weight``), and its hit rate
is measured there exactly. Fill-in-the-blank (FITB): the held-out item among itself and 3 random
products of its category not in the outfit (Polyvore's format; random = 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.ctl import CTLModel
from training import metrics as M
from training.features import FeatureCache
from training.loss import attention_nll, triplet_loss
from training.sampling import Example, TripletSampler
from training.split import split_scenes


@dataclass
class OutfitDomain:
    """The outfit cache as float32 tensors (views first, like ``train.Tensors``) and its
    examples split by outfit."""

    scene_global: torch.Tensor  # (1, N, G)
    scene_regions: torch.Tensor  # (1, N, R, L)
    product_global: torch.Tensor  # (1, P, G)
    product_cat: np.ndarray  # (P,) category index, -1: not an STL category
    examples: dict[str, list[Example]]
    samplers: dict[str, TripletSampler]
    relevant: np.ndarray  # (N, R) regions mostly covered by the composed items

    @classmethod
    def build(
        cls, cache: FeatureCache, categories: list[str], seed: int, grid: int = 7
    ) -> OutfitDomain:
        cat_idx = {c: i for i, c in enumerate(categories)}
        product_cat = np.array([cat_idx.get(c, -1) for c in cache.product_categories], np.int64)
        raw = cache.examples
        split = split_scenes((e["outfit"] for e in raw), (0.9, 0.05, 0.05), seed)
        scene_products = {e["scene"]: {e["product"], *e["others"]} for e in raw}
        examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        for e in raw:
            ex = Example(e["crop"], e["scene"], e["product"], cat_idx[e["category"]])
            examples[split[e["outfit"]]].append(ex)
        samplers = {k: TripletSampler(v, product_cat, scene_products) for k, v in examples.items()}
        relevant = np.stack([M.region_relevance([tuple(b) for b in e["boxes"]], grid) for e in raw])

        def load(kind: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(cache.array(kind, "orig"), np.float32)[None])

        return cls(
            load("scene_global"),
            load("scene_regions"),
            load("product_global"),
            product_cat,
            examples,
            samplers,
            relevant,
        )

    def match_moments(
        self, scene_global: torch.Tensor, scene_regions: torch.Tensor, product_global: torch.Tensor
    ) -> None:
        """Map each outfit array per dimension onto the mean/std of the given STL features
        ((N, G), (M, L), (P, G), training rows only)."""
        train_rows = torch.tensor(sorted({e.row for e in self.examples["train"]}))

        def remap(x: torch.Tensor, fit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            mu, sd = fit.mean(0), fit.std(0) + 1e-3
            return (x - mu) / sd * (target.std(0) + 1e-3) + target.mean(0)

        g, r = self.scene_global[0], self.scene_regions[0]
        self.scene_global = remap(g, g[train_rows], scene_global)[None]
        self.scene_regions = remap(r, r[train_rows].flatten(0, 1), scene_regions)[None]
        p = self.product_global[0]
        self.product_global = remap(p, p, product_global)[None]


def outfit_loss(
    model: CTLModel,
    dom: OutfitDomain,
    batch: np.ndarray,
    margin: float,
    attention_weight: float,
) -> torch.Tensor:
    """Triplet loss on d* for ``[scene_row, positive, negative]`` rows of composed scenes, plus
    ``attention_weight`` x -log(attention mass on the regions the composed items cover)."""
    s, p, n = (torch.from_numpy(batch[:, k]) for k in range(3))
    cats = torch.from_numpy(dom.product_cat[batch[:, 1]])
    f_s, f_i, keys = model.scene_embeddings(dom.scene_global[0, s], dom.scene_regions[0, s])
    att = model.attention(keys, cats)
    q = model.query_vector(f_s, f_i, att)
    f_pos = model.product_embedding(dom.product_global[0, p])
    f_neg = model.product_embedding(dom.product_global[0, n])
    loss = triplet_loss(2 - (q * f_pos).sum(-1), 2 - (q * f_neg).sum(-1), margin)
    if attention_weight > 0:
        loss = loss + attention_weight * attention_nll(
            att, torch.from_numpy(dom.relevant[batch[:, 0]])
        )
    return loss


@torch.no_grad()
def outfit_metrics(
    model: CTLModel, dom: OutfitDomain, split: str, seed: int = 0
) -> dict[str, float | int]:
    """FITB (held-out item among itself and 3 same-category products outside the outfit; ties
    count as a share) and the attention hit rates on composed scenes, each beside random."""
    model.eval()
    sampler = dom.samplers[split]
    examples = sampler.examples
    if not examples:
        return {"n": 0}
    rows = torch.tensor([e.row for e in examples])
    cats = torch.tensor([e.category for e in examples])
    f_s, f_i, keys = model.scene_embeddings(dom.scene_global[0, rows], dom.scene_regions[0, rows])
    att = model.attention(keys, cats)
    q = model.query_vector(f_s, f_i, att)
    f_p = model.product_embedding(dom.product_global[0])
    scores = (q @ f_p.T).numpy()
    rng = np.random.default_rng(seed)
    wins = []
    for i, ex in enumerate(examples):
        cand = sampler.candidates(ex)
        negs = rng.choice(cand, size=min(3, len(cand)), replace=False)
        pos, neg = scores[i, ex.product], scores[i, negs]
        better = (neg > pos).sum()
        ties = (neg == pos).sum()
        wins.append(float(better == 0) / (1 + ties))
    out: dict[str, float | int] = {"n": len(examples), "fitb": float(np.mean(wins))}
    out["fitb_random"] = 0.25
    att_summary = M.attention_summary(att.numpy(), dom.relevant[rows.numpy()])
    out.update({f"attention_{k}": v for k, v in att_summary.items()})
    return out
