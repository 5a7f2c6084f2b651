"""Linear-probe baseline (method.md 2.4): frozen features -> BatchNorm1d(affine=False) -> Linear(no bias).

For deployment the eval-mode BatchNorm folds into an affine map on the L2-normalised image feature f:
    logits = ((f - μ) / σ) W^T = f (W/σ)^T - (μ/σ) W^T = f A^T + b
which `folded()` returns; `ml.export` applies it with logit_scale 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, *, seed: int = 1):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)  # standardise each feature dim with batch / running stats
        self.fc = nn.Linear(dim, num_classes, bias=False)  # the only trained weights
        gen = torch.Generator().manual_seed(seed)
        nn.init.trunc_normal_(self.fc.weight, std=1.0, generator=gen)  # trunc_normal(std 1), as the official LP

    def forward(self, f: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """(B, D) normalised image features -> (B, K) logits.

        In train mode with ``update_stats=False`` the batch is normalised with its own statistics but the running
        statistics (what the deployed classifier folds in) are left alone: a second forward of the same step must
        not count the batch twice.
        """
        if self.training and not update_stats:
            return self.fc(F.batch_norm(f, None, None, training=True, eps=self.bn.eps))
        return self.fc(self.bn(f))

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (K, D), b (K,)) with logits = f A^T + b equal to the eval-mode forward."""
        sigma = torch.sqrt(self.bn.running_var + self.bn.eps)  # [D]
        a = self.fc.weight / sigma  # [K, D]
        b = -(self.bn.running_mean / sigma) @ self.fc.weight.T  # [K]
        return a.clone(), b.clone()
