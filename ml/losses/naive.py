"""NAIVE: average cross-entropy over all candidates (CoOpPLL `alg_PLL/NAIVE.py`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml.losses.base import PLLBatch, PLLLoss


class NaiveLoss(PLLLoss):
    """L = -(1/B) Σ_i (1/|S_i|) Σ_{k∈S_i} log p_ik,  p = softmax(z).  No state."""

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        logp = F.log_softmax(batch.logits[0], dim=1)
        return -((logp * batch.mask).sum(1) / batch.mask.sum(1)).mean()
