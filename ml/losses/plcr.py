"""PLCR / CRDPLL, consistency-regularised PLL (Wu, Wang & Zhang, ICML 2022); CoOpPLL `alg_PLL/PLCR.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml.losses.base import PLLBatch, PLLLoss, candidate_softmax, uniform_confidence


class PLCRLoss(PLLLoss):
    """Three views v of each item (w1, w2, s):

        L = λ_t Σ_{v=1..3} KL(c_i ‖ p^v_i) (batchmean)  -  (1/B) Σ_i Σ_{k∉S_i} log(1.0000001 - p^{w1}_ik)
        λ_t = min(2 · epoch / epochs, 1)   (epoch 0-based)

    then, detached: c_i <- normalise(Y_i ⊙ Π_v (p^v_i)^{1/3}).
    Deviation: the three views are three distinct *cached* views of the frozen encoder, drawn afresh every epoch
    among the clean one and the augmented ones (RandomResizedCrop + flip; ml.train._epoch_plan), not the
    paper's weak/weak/strong (RandAugment, Cutout) pipelines; with a single cached view all three are view 0 and
    the consistency term only pulls p towards c. The original CRDPLL ramp is
    min(epoch/100 · λ, λ); CoOpPLL's is used here.
    """

    n_views = 3

    def __init__(self, candidates: torch.Tensor, *, epochs: int, feature_dim: int, seed: int = 0):
        super().__init__(candidates, epochs=epochs, feature_dim=feature_dim, seed=seed)
        self.register_buffer("confidence", uniform_confidence(candidates))  # (N, K)

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        views = batch.logits if len(batch.logits) >= 3 else [batch.logits[0]] * 3
        c = self.confidence[batch.index]
        logps = [F.log_softmax(z, dim=1) for z in views[:3]]
        lam = min(2.0 * self.epoch / max(self.epochs, 1), 1.0)
        consist = sum(F.kl_div(lp, c, reduction="batchmean") for lp in logps)
        p1 = logps[0].exp()
        sup = -((1 - batch.mask) * torch.log(1.0000001 - p1)).sum(1).mean()
        with torch.no_grad():
            # normalise(Π_v p_v^{1/3} ⊙ Y) = softmax over the candidates of the mean log-probability (no underflow)
            self.confidence[batch.index] = candidate_softmax(sum(lp for lp in logps) / 3, batch.mask)
        return lam * consist + sup
