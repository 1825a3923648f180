"""Outfit item pairs: the stylists' outfits as product-to-product compatibility.

An outfit minus one item is a context (the normalized mean of the other items' product
embeddings); the held-out item should be nearer it than a product of its category outside the
outfit (triplet, through the product head the catalog index uses). Unlike composed scenes
(``training.joint``) this needs only the outfit photos' global features, one backbone pass per
photo, and it teaches the product head which garments go together.

Fill-in-the-blank (FITB) is measured the same way: the held-out item among itself and 3 random
products of its category not in the outfit, scored against the context (random: 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.ctl import CTLModel
from training.features import FeatureCache
from training.loss import triplet_loss
from training.outfits import OutfitData
from training.sampling import Example, TripletSampler


@dataclass
class ItemPairs:
    """Outfit photos' global features (P, G) and the held-out-item examples of each split; an
    example's ``row`` indexes ``others`` (product rows of the rest of its outfit, -1 padded)."""

    product_global: torch.Tensor
    others: torch.Tensor  # (E, M) int64
    samplers: dict[str, TripletSampler]

    @classmethod
    def build(
        cls, cache: FeatureCache, data: OutfitData, categories: list[str], seed: int
    ) -> ItemPairs:
        cat_idx = {c: i for i, c in enumerate(categories)}
        row = {p: i for i, p in enumerate(cache.products)}
        product_cat = np.array([cat_idx.get(c, -1) for c in cache.product_categories], np.int64)
        split = data.split(seed)
        examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        others: list[list[int]] = []
        members: dict[str, set[int]] = {}
        for outfit, items in sorted(data.outfits.items()):
            rows = [row[p] for p in items if p in row]
            members[outfit] = set(rows)
            for r in rows:
                if product_cat[r] >= 0:
                    ex = Example(len(others), outfit, r, int(product_cat[r]))
                    examples[split[outfit]].append(ex)
                    others.append([o for o in rows if o != r])
        width = max((len(o) for o in others), default=1)
        padded = torch.full((len(others), width), -1, dtype=torch.int64)
        for i, o in enumerate(others):
            padded[i, : len(o)] = torch.tensor(o, dtype=torch.int64)
        samplers = {k: TripletSampler(v, product_cat, members) for k, v in examples.items()}
        g = torch.from_numpy(np.asarray(cache.array("product_global", "orig"), np.float32))
        return cls(g, padded, samplers)

    def match_moments(self, product_global: torch.Tensor) -> None:
        """Map the outfit photos per dimension onto the STL catalog photos' mean/std: the
        retailer's studio differs from STL's, and the heads standardize with STL statistics."""
        g = self.product_global
        z = (g - g.mean(0)) / (g.std(0) + 1e-3)
        self.product_global = z * (product_global.std(0) + 1e-3) + product_global.mean(0)

    def contexts(self, model: CTLModel, rows: torch.Tensor) -> torch.Tensor:
        """The unit mean of the other items' product embeddings, (B, D)."""
        others = self.others[rows]
        mask = (others >= 0).unsqueeze(-1)
        f = model.product_embedding(self.product_global[others.clamp_min(0).flatten()])
        summed = (f.view(*others.shape, -1) * mask).sum(1)
        return F.normalize(summed, dim=-1)


def item_pair_loss(
    model: CTLModel, pairs: ItemPairs, batch: np.ndarray, margin: float
) -> torch.Tensor:
    """Triplet loss on ``[example, held-out item, negative]`` rows, against the context."""
    a, p, n = (torch.from_numpy(batch[:, k]) for k in range(3))
    ctx = pairs.contexts(model, a)
    f_p = model.product_embedding(pairs.product_global[p])
    f_n = model.product_embedding(pairs.product_global[n])
    return triplet_loss(2 - (ctx * f_p).sum(-1), 2 - (ctx * f_n).sum(-1), margin)


@torch.no_grad()
def fitb(model: CTLModel, pairs: ItemPairs, split: str, seed: int = 0) -> dict[str, float | int]:
    """Fill-in-the-blank accuracy of ``split`` (ties count as a share), beside random."""
    model.eval()
    sampler = pairs.samplers[split]
    if not sampler.examples:
        return {"n": 0}
    rows = torch.tensor([e.row for e in sampler.examples])
    scores = (pairs.contexts(model, rows) @ model.product_embedding(pairs.product_global).T).numpy()
    rng = np.random.default_rng(seed)
    wins = []
    for i, ex in enumerate(sampler.examples):
        cand = sampler.candidates(ex)
        neg = scores[i, rng.choice(cand, size=min(3, len(cand)), replace=False)]
        pos = scores[i, ex.product]
        wins.append(float((neg > pos).sum() == 0) / (1 + (neg == pos).sum()))
    return {"n": len(wins), "fitb": float(np.mean(wins)), "fitb_random": 0.25}
