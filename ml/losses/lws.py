"""LWS, leveraged weighted loss (Wen et al., ICML 2021), softmax form of CoOpPLL `alg_PLL/LWS.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml.losses.base import PLLBatch, PLLLoss


class LWSLoss(PLLLoss):
    """L = (1/B) Σ_i [ Σ_{k∈S_i} w_ik (-log p_ik) + β Σ_{k∉S_i} w_ik (-log(1 - p_ik + 1e-8)) ],  β = 1.

    Weights w are initialised to 1/K everywhere; after each optimiser step (fresh no-grad forward):
        w_i <- p_i⊙Y_i / Σ(p_i⊙Y_i) + p_i⊙(1-Y_i) / Σ(p_i⊙(1-Y_i))
    Deviation from the original paper's code (hongwei-wen/LW-loss-for-partial-label): that uses a sigmoid loss on
    logits with a tuned β; CoOpPLL (followed here) uses these softmax log-losses with β = 1.
    """

    needs_after_step = True

    def __init__(self, candidates: torch.Tensor, *, epochs: int, feature_dim: int, seed: int = 0, beta: float = 1.0):
        super().__init__(candidates, epochs=epochs, feature_dim=feature_dim, seed=seed)
        self.beta = beta  # weight of the non-candidate term (lw_weight)
        n, k = candidates.shape
        self.register_buffer("weight", torch.full((n, k), 1.0 / k))  # (N, K)

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        p = F.softmax(batch.logits[0], dim=1)
        logp = F.log_softmax(batch.logits[0], dim=1)
        w = self.weight[batch.index]
        y = batch.mask
        sup = (w * y * -logp).sum()
        unsup = (w * (1 - y) * -torch.log(1 - p + 1e-8)).sum()
        return (sup + self.beta * unsup) / y.shape[0]

    @torch.no_grad()
    def after_step(self, logits: torch.Tensor, batch: PLLBatch) -> None:
        # p⊙Y / Σ(p⊙Y) is the softmax over the candidates' logits alone (and likewise for the non-candidates):
        # computed that way it never divides by a candidate mass that underflowed to 0 (extreme logits -> NaN)
        y = batch.mask > 0
        z = logits.float()
        pos = F.softmax(z.masked_fill(~y, float("-inf")), dim=1)  # every item has a candidate: finite
        has_neg = (~y).any(dim=1, keepdim=True)
        neg = F.softmax(z.masked_fill(y, float("-inf")), dim=1)
        neg = torch.where(has_neg, neg, torch.zeros_like(neg))  # an all-candidate row: softmax of -inf is NaN
        self.weight[batch.index] = pos + neg
