"""CC, classifier-consistent risk (Feng et al., NeurIPS 2020; CoOpPLL `alg_PLL/CC.py`)."""

from __future__ import annotations

import torch

from ml.losses.base import PLLBatch, PLLLoss


class CCLoss(PLLLoss):
    """L = -(1/B) Σ_i log Σ_{k∈S_i} p_ik,  p = softmax(z).  No state.

    Deviation: computed as logsumexp(z_S) - logsumexp(z) (numerically stable) instead of log(Σ_S p + 1e-7);
    the two agree up to the 1e-7 guard.
    """

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        z = batch.logits[0]
        z_cand = z.masked_fill(batch.mask <= 0, float("-inf"))
        return (torch.logsumexp(z, dim=1) - torch.logsumexp(z_cand, dim=1)).mean()
