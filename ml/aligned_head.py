"""The aligned head (method ``aligned_head``): a linear classifier that starts as the handcrafted prompt's classifier
and is held near it, trained with a PLL loss and the paper's alignment target.

    z(f) = f̂ · P^T + c  +  BN(f̂) · Δ^T
           `---------´     `----------´
           the prior       the residual (zero at start, weight decay toward zero)

* the prior: P = g · (s / T) · t̃ (the handcrafted class text features t̃, CLIP's logit scale s) and c = g · b,
  with (T, b) fitted on the training items' candidate sets (``ml.prior.calibrate_prior``, no true labels) and g the
  share of the prior they support (``ml.prior.prior_evidence``: 1 - (K + 1)/LR, at least 0). So the head starts
  as the calibrated zero-shot classifier, and a prior that the candidate sets do not support starts at zero.
* the residual: BatchNorm(affine=False) + Linear(no bias) as the linear probe (method.md 2.4), initialised at zero.
  Weight decay pulls it toward zero, i.e. the head toward the prior. With ``prior_strength`` λ the decay is λ / N
  for N training items: the MAP reading of a Gaussian prior on Δ, so the data moves the head further from the
  handcrafted classifier the more items there are, with no switch at any size. It is applied as a proximal step
  after each SGD update, Δ ← Δ / (1 + lr·λ/N), stable however few the items (SGD's own decay diverges once
  lr·λ/N > 2).
* training (``ml.train.fit``): L = L_PLL(z) + L_align(z, q) · sg(L_PLL)/sg(L_align) with the paper's teacher
  q = normalise(Y ⊙ ((1 − a)·softmax(prior logits) + a·sg(softmax(z)))), a from ``mix`` ("trust": a = 1 − ρ,
  ρ = ρ̂ · g, ρ̂ from ``ml.prior.prior_trust``); with RC and ``graph_weight`` > 0 the confidences are propagated over
  the training items' feature graph (``ml.prior``).

For deployment the eval-mode head folds into one class matrix and bias on f̂ (``folded``), like the linear probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignedHead(nn.Module):
    def __init__(self, prior_rows: torch.Tensor, prior_bias: torch.Tensor):
        super().__init__()
        k, dim = prior_rows.shape
        self.register_buffer("prior_rows", prior_rows.detach().float().clone())  # (K, D) = (s / T) t̃
        self.register_buffer("prior_bias", prior_bias.detach().float().clone())  # (K,)
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.fc = nn.Linear(dim, k, bias=False)
        nn.init.zeros_(self.fc.weight)  # the head starts as the (calibrated) handcrafted classifier

    def prior_logits(self, f: torch.Tensor) -> torch.Tensor:
        """(B, K) logits of the calibrated handcrafted classifier alone (the alignment teacher's source)."""
        return f @ self.prior_rows.T + self.prior_bias

    def forward(self, f: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """(B, D) normalised image features -> (B, K) logits (``update_stats``: as ``ml.linear_probe``)."""
        if self.training and not update_stats:
            x = F.batch_norm(f, None, None, training=True, eps=self.bn.eps)
        else:
            x = self.bn(f)
        return self.prior_logits(f) + self.fc(x)

    @torch.no_grad()
    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (K, D), b (K,)) with logits = f A^T + b equal to the eval-mode forward."""
        sigma = torch.sqrt(self.bn.running_var + self.bn.eps)
        a = self.prior_rows + self.fc.weight / sigma
        b = self.prior_bias - (self.bn.running_mean / sigma) @ self.fc.weight.T
        return a.clone(), b.clone()
