"""The training objective, on d*(s, x) = 2 - <q, f_x> (unit vectors, q = f_s + sum_i a_i f_i)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NEGATIVES = ("random", "hard", "semihard")


def triplet_loss(d_pos: torch.Tensor, d_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(max(0, d*(s, p) - d*(s, n) + margin)): zero once every positive wins by the margin."""
    return F.relu(d_pos - d_neg + margin).mean()


def attention_nll(attention: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """-log(attention mass on the relevant regions), averaged over the rows that have any:
    tells the category attention to look at garments rather than at the background."""
    has = relevant.any(-1)
    if not has.any():
        return attention.new_zeros(())
    mass = (attention[has] * relevant[has]).sum(-1).clamp_min(1e-6)
    return -torch.log(mass).mean()


class CTLLoss(nn.Module):
    """Triplet loss with a margin on d*, against the drawn negative or one mined in the batch,
    plus an optional in-batch softmax contrastive term.

    ``negatives``: ``random`` keeps the drawn negative; with ``hard`` and ``semihard`` every
    product of the batch (positives and negatives) of the scene's category and not paired with
    the scene is a candidate: ``hard`` takes the most similar one, ``semihard`` the most similar
    one still farther than the positive (else the drawn one). ``contrastive``: weight of a
    cross-entropy over the same candidates at ``temperature``, the positive the right answer.
    """

    def __init__(
        self,
        margin: float = 0.2,
        negatives: str = "random",
        contrastive: float = 0.0,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if negatives not in NEGATIVES:
            raise ValueError(f"unknown negatives {negatives!r}; choose one of {NEGATIVES}")
        self.margin = margin
        self.negatives = negatives
        self.contrastive = contrastive
        self.temperature = temperature

    def forward(
        self,
        q: torch.Tensor,
        f_pos: torch.Tensor,
        f_neg: torch.Tensor,
        cats: torch.Tensor,
        paired: torch.Tensor,
    ) -> torch.Tensor:
        """The loss of B triplets: queries ``q``, positives ``f_pos`` and drawn negatives
        ``f_neg`` (B, D), the positives' categories ``cats`` (B,), and ``paired`` (B, 2B):
        candidate j (positives, then negatives) is labelled with scene i."""
        b = len(q)
        sim_pos = (q * f_pos).sum(-1)
        sim_neg = (q * f_neg).sum(-1)
        if self.negatives != "random":
            cand = torch.cat([f_pos, f_neg])  # (2B, D)
            cand_cat = torch.cat([cats, cats])
            sim = q @ cand.T  # (B, 2B)
            valid = (cand_cat[None, :] == cats[:, None]) & ~paired
            if self.negatives == "semihard":
                valid &= sim < sim_pos.detach()[:, None]
            mined = sim.masked_fill(~valid, -1e4).max(1).values
            sim_neg = torch.where(valid.any(1), mined, sim_neg)
        loss = triplet_loss(2 - sim_pos, 2 - sim_neg, self.margin)
        if self.contrastive > 0:
            cand = torch.cat([f_pos, f_neg])
            logits = (q @ cand.T) / self.temperature
            mask = paired.clone()
            mask[torch.arange(b), torch.arange(b)] = False  # the positive stays
            logits = logits.masked_fill(mask, -1e4)
            loss = loss + self.contrastive * F.cross_entropy(logits, torch.arange(b))
        return loss
