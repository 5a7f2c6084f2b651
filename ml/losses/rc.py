"""RC (Feng et al., NeurIPS 2020), equivalent to PRODEN (Lv et al., ICML 2020); CoOpPLL `alg_PLL/RC.py`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml.losses.base import PLLBatch, PLLLoss, candidate_softmax, renormalise, uniform_confidence


class RCLoss(PLLLoss):
    """L = -(1/B) Σ_i Σ_k c_ik log p_ik, with per-item confidences c (init Y/|S|).

    After each optimiser step, from a fresh no-grad forward of the same batch:
        c_i <- (p_i ⊙ Y_i) / Σ_k p_ik Y_ik, computed as the softmax over the candidates' logits (never underflows;
        CoOpPLL's product form with + 1e-7 zeroes an item whose candidates all sit far below a non-candidate)
    """

    needs_after_step = True

    def __init__(self, candidates: torch.Tensor, *, epochs: int, feature_dim: int, seed: int = 0):
        super().__init__(candidates, epochs=epochs, feature_dim=feature_dim, seed=seed)
        self.register_buffer("confidence", uniform_confidence(candidates))  # (N, K)
        self.neighbours: torch.Tensor | None = None  # (N, k) training-item graph (set_graph); not state: rebuilt
        self.graph_weight = 0.0

    def set_graph(self, neighbours: torch.Tensor, weight: float) -> None:
        """Propagate over a feature graph: after each step c_i <- normalise(Y_i ⊙ ((1 - w) p_i + w mean_j c_j)),
        j over item i's neighbours (ml.prior; transductive label propagation inside RC's update)."""
        self.neighbours = neighbours.to(self.confidence.device)
        self.graph_weight = float(weight)

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        logp = F.log_softmax(batch.logits[0], dim=1)
        return -(self.confidence[batch.index] * logp).sum(1).mean()

    @torch.no_grad()
    def after_step(self, logits: torch.Tensor, batch: PLLBatch) -> None:
        p = candidate_softmax(logits, batch.mask)  # p ⊙ Y, renormalised
        if self.neighbours is not None and self.graph_weight > 0 and self.neighbours.shape[1]:
            around = self.confidence[self.neighbours[batch.index]].mean(dim=1)  # [B, K]
            p = renormalise((1 - self.graph_weight) * p + self.graph_weight * around, batch.mask)
        self.confidence[batch.index] = p
