"""Outfit item pairs: the context vector, and that the loss learns which items go together."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model.ctl import CTLModel
from training.item_pairs import ItemPairs, fitb, item_pair_loss
from training.sampling import Example, TripletSampler


def test_context_is_the_unit_mean_of_the_other_items_ignoring_padding() -> None:
    torch.manual_seed(0)
    model = CTLModel(8, 4, ["A"], dim=6, hidden=8).eval()
    g = torch.randn(5, 8)
    others = torch.tensor([[1, 2, -1], [0, -1, -1]])
    pairs = ItemPairs(g, others, {})
    got = pairs.contexts(model, torch.tensor([0, 1]))
    f = model.product_embedding(g)
    torch.testing.assert_close(got[0], F.normalize(f[1] + f[2], dim=0))
    torch.testing.assert_close(got[1], f[0])


def styled_outfits(seed: int) -> tuple[ItemPairs, dict[str, list[Example]]]:
    """8 styles x (3 tops, 3 shoes): an outfit is a top and a shoe of one style. A product's
    features are its style's look in its category plus noise, and a style's tops and shoes look
    unrelated: what goes together must be learned, not read off similarity."""
    rng = np.random.default_rng(seed)
    looks = rng.normal(size=(2, 8, 16))  # (category, style)
    cats = np.array([c for _ in range(8) for c in (0, 0, 0, 1, 1, 1)])
    style_of = np.repeat(np.arange(8), 6)
    noise = 0.3 * rng.normal(size=(48, 16))
    g = torch.tensor(looks[cats, style_of] + noise, dtype=torch.float32)
    examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    others, members = [], {}
    for k in range(80):
        s = k % 8
        top, shoe = 6 * s + rng.integers(3), 6 * s + 3 + rng.integers(3)
        split = "train" if k < 64 else "val"
        members[f"o{k}"] = {int(top), int(shoe)}
        for target, other in ((top, shoe), (shoe, top)):
            examples[split].append(Example(len(others), f"o{k}", int(target), int(cats[target])))
            others.append([int(other)])
    samplers = {k: TripletSampler(v, cats, members) for k, v in examples.items()}
    return ItemPairs(g, torch.tensor(others), samplers), examples


def test_item_pair_training_learns_what_goes_together() -> None:
    torch.manual_seed(0)
    pairs, _ = styled_outfits(0)
    model = CTLModel(16, 4, ["tops", "shoes"], dim=8, hidden=32, dropout=0.0)
    before = fitb(model, pairs, "val")["fitb"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(60):
        model.train()
        batch = pairs.samplers["train"].epoch(rng)
        loss = item_pair_loss(model, pairs, batch, 0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fitb(model, pairs, "val")
    assert after["n"] == 32 and after["fitb_random"] == 0.25
    assert before < 0.4 and after["fitb"] >= 0.7
