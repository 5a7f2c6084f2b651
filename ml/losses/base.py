"""Common interface of the partial-label (PLL) objectives.

Every objective is an `nn.Module` whose buffers hold its state (confidences, queues, ...), so
`state_dict()` / `load_state_dict()` checkpoint it. The trainer calls, per mini-batch:

    loss = objective(batch)                     # logits of the learnable prompts, per view
    ... SGD step ...
    objective.after_step(fresh_logits, batch)   # only when `needs_after_step` (RC, LWS)

and `objective.set_epoch(epoch)` (0-based) at the start of every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PLLBatch:
    logits: list[torch.Tensor]  # one (B, K) learnable-logit tensor per view; logits[0] is the main view
    mask: torch.Tensor  # (B, K) float {0,1}: candidate set Y of each item
    index: torch.Tensor  # (B,) long: row of each item in the training set (for per-item state)
    features: list[torch.Tensor] | None = None  # one (B, D) L2-normalised image feature per view (PiCO head)
    pll_loss: torch.Tensor | None = None  # set by ml.train.step_loss: the PLL term alone (detached)
    align_loss: torch.Tensor | None = None  # and the alignment term, unweighted (prompt alignment only)


class PLLLoss(nn.Module):
    """Base class: `forward(batch) -> scalar loss`; state lives in buffers."""

    n_views: int = 1  # how many distinct (cached) views of each item the loss wants per step
    needs_after_step: bool = False  # wants a fresh no-grad forward of the same batch after the optimiser step

    def __init__(self, candidates: torch.Tensor, *, epochs: int, feature_dim: int, seed: int = 0):
        super().__init__()
        self.seed = seed  # the job's seed: any random init of the loss's own weights and state comes from it
        assert candidates.dim() == 2, f"candidates must be (N, K), got {tuple(candidates.shape)}"
        self.num_classes = candidates.shape[1]
        self.epochs = epochs
        self.feature_dim = feature_dim
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of each epoch (0-based)."""
        self.epoch = epoch

    def forward(self, batch: PLLBatch) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, logits: torch.Tensor, batch: PLLBatch) -> None:
        """State update from a fresh no-grad forward of the same batch after the SGD step."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the loss itself trains (PiCO's projection head); empty for most losses."""
        return [p for p in self.parameters() if p.requires_grad]


def uniform_confidence(candidates: torch.Tensor) -> torch.Tensor:
    """c_i = Y_i / |S_i|: (N, K) float."""
    y = candidates.float()
    return y / y.sum(dim=1, keepdim=True)


def renormalise(p: torch.Tensor, mask: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(p ⊙ Y) / (Σ_k p_k Y_k + eps), row-wise. For p = softmax(z) use :func:`candidate_softmax` instead."""
    pm = p * mask
    return pm / (pm.sum(dim=1, keepdim=True) + eps)


def candidate_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(z) ⊙ Y renormalised, computed as the softmax over the candidates' logits alone (0 outside them).

    The product form underflows: when every candidate sits ~104 logits below a non-candidate, softmax(z) ⊙ Y is
    all zeros in float32 and the row carries no information (or divides 0 by 0). Every row needs a candidate.
    """
    return logits.float().masked_fill(mask <= 0, float("-inf")).softmax(dim=1)
