"""The region-style head (issue 16, mechanism b): grids pulled to their product's embedding."""

from __future__ import annotations

import numpy as np
import torch

from model.ctl import CTLModel
from training.region_style import catalog_sampler, region_style_loss


def test_catalog_sampler_draws_negatives_of_the_products_own_category() -> None:
    cats = np.array([0, 1, 0, 1, -1, 0])
    sampler = catalog_sampler(cats)
    assert [e.row for e in sampler.examples] == [0, 1, 2, 3, 5]  # uncategorized: no example
    rows = sampler.epoch(np.random.default_rng(0))
    assert (rows[:, 0] == rows[:, 1]).all()  # a product's own grid against its own photo
    assert (rows[:, 1] != rows[:, 2]).all()
    assert (cats[rows[:, 1]] == cats[rows[:, 2]]).all()


def test_region_style_loss_maps_a_grid_to_its_own_product() -> None:
    """Grids are noisy region copies of a hidden code that also drives the products' global
    features: training the loss alone makes each grid's mean region embedding nearest its own
    product among 10, where at initialization it is near chance. The product head's weights
    are the target and stay as they are."""
    torch.manual_seed(0)
    model = CTLModel(8, 4, ["A"], dim=16, hidden=32, dropout=0.0)
    product_head = {k: v.clone() for k, v in model.g_global.named_parameters()}
    code = torch.randn(10, 4)
    products = (code @ torch.randn(4, 8))[None]  # (1, 10, 8)
    grids = (code[:, None, :] + 0.5 * torch.randn(10, 49, 4))[None]  # (1, 10, 49, 4)

    def hits() -> float:
        model.eval()
        with torch.no_grad():
            local = model.region_style(grids[0]).mean(1)
            sims = local @ model.product_embedding(products[0]).T
        model.train()
        return float((sims.argmax(1) == torch.arange(10)).float().mean())

    before = hits()
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        batch = np.array([(i, i, (i + 1 + rng.integers(9)) % 10) for i in range(10)])
        loss = region_style_loss(model, batch, grids, products, 0.2, rng)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.g_global.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert hits() >= 0.8 > before
    for k, v in model.g_global.named_parameters():
        assert torch.equal(v, product_head[k]), k
