"""CAVL, class activation value learning (Zhang et al., ICLR 2022); CoOpPLL `alg_PLL/CAVL.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml.losses.base import PLLBatch, PLLLoss


class CAVLLoss(PLLLoss):
    """cav_ik = z_ik · |1 - z_ik| on logits, restricted to S_i;  ŷ_i = argmax_{k∈S_i} cav_ik (no grad);
    L = CE(z, ŷ).  No stored state: ŷ is recomputed from the current forward every step (as CoOpPLL).

    Deviation: non-candidates are masked with -inf before the argmax. CoOpPLL multiplies by Y, so a non-candidate
    (cav 0) could win when every candidate's cav is negative; the reference implementation stores onehot(ŷ) as
    an RC-style confidence instead (method.md section 3).
    """

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        z = batch.logits[0]
        with torch.no_grad():
            cav = (z * (1 - z).abs()).masked_fill(batch.mask <= 0, float("-inf"))
            target = cav.argmax(dim=1)
        return F.cross_entropy(z, target)
