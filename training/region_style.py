"""A region-level style head (issue 16's mechanism b): region grids mapped into product space.

The scene query is q = f_s + sum_i a_i f_i with f_i = g_local(region i), scored against the
candidate's f_p. Nothing tells f_i what a garment's style is, so the local branch learns little
from 2,244 STL pairs. Here a grid that shows one product, either its catalog photo or the
product cut out of its street photo by its bbox (the street domain, the bridge), is pulled to
that product's own embedding f_p: sim = mean_i <f_i, f_p> (the local part of q under uniform
attention) must beat a product of its category by the margin. f_p is the target, held fixed by
this loss (100 epochs, val AUC 0.633 / 0.649 on seeds 0 / 1 with it fixed, 0.612 / 0.648 when
this loss moved the product head too). The garments of a street photo
then land where their catalog photos are, and whatever the product head learns about which
products go together (the outfits' item pairs) carries to the attention-weighted regions.
"""

from __future__ import annotations

import numpy as np
import torch

from model.ctl import CTLModel
from training.loss import triplet_loss
from training.sampling import Example, TripletSampler


def catalog_sampler(product_cat: np.ndarray) -> TripletSampler:
    """Every catalog product as an example of its own grid (``row`` = its product row)."""
    examples = [Example(p, f"product:{p}", p, int(c)) for p, c in enumerate(product_cat) if c >= 0]
    return TripletSampler(examples, product_cat, {})


def region_style_loss(
    model: CTLModel,
    batch: np.ndarray,
    grids: torch.Tensor,
    product_global: torch.Tensor,
    margin: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Triplet loss on ``[grid row, product, negative]`` rows: ``grids`` (V, N, R, L) of the
    anchors, ``product_global`` (V, P, G) of the catalog photos; views drawn from ``rng``."""
    v = torch.from_numpy(rng.integers(grids.shape[0], size=(3, len(batch))))
    a, p, n = (torch.from_numpy(batch[:, k]) for k in range(3))
    local = model.region_style(grids[v[0], a]).mean(1)  # (B, D), not normalized, like q's part
    with torch.no_grad():  # the product space is the target: regions follow it
        f_p = model.product_embedding(product_global[v[1], p])
        f_n = model.product_embedding(product_global[v[2], n])
    return triplet_loss(1 - (local * f_p).sum(-1), 1 - (local * f_n).sum(-1), margin)
