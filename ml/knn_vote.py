"""Neighbourhood voting over candidate sets in image-feature space (the local step of HopS, method.md section 5).

For item i with candidate mask Y_i, its k nearest training items j (cosine similarity of the frozen image features,
itself excluded) vote for every label in their own candidate sets:

    v_ik = Y_ik · Σ_{j ∈ N_k(i)} Y_jk / k            (share of neighbours whose candidate set also holds k)

The true label of i is in Y_j for every same-class neighbour, a wrong candidate only by chance (q) or for a
neighbour of that class, so v concentrates on the true label when neighbours share classes. `prune_candidates`
keeps the candidates with v_ik >= tau · max_k v_ik (the arg max always survives): a smaller candidate set for
any PLL loss. Used as an option by `bench.reproduce` (methods "knn-*"); not part of CoOpPLL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def neighbour_votes(features: torch.Tensor, candidates: torch.Tensor, k: int = 10) -> torch.Tensor:
    """(N, K) float votes v (see module doc) for (N, D) features and (N, K) bool candidates."""
    n = features.shape[0]
    if n < 2:
        return candidates.float()
    k = max(1, min(k, n - 1))
    f = F.normalize(features.float(), dim=-1)
    sim = f @ f.T
    sim.fill_diagonal_(-float("inf"))
    nn_idx = sim.topk(k, dim=1).indices  # [N, k]
    y = candidates.float()
    return y * y[nn_idx].mean(dim=1)


@torch.no_grad()
def prune_candidates(features: torch.Tensor, candidates: torch.Tensor, k: int = 10, tau: float = 0.5) -> torch.Tensor:
    """(N, K) bool: the candidates whose neighbour vote is at least tau times the item's best vote."""
    y = candidates.bool()
    v = neighbour_votes(features, y, k)
    best = v.max(dim=1, keepdim=True).values
    keep = y & (v >= tau * best)
    top = v.masked_fill(~y, -1.0).argmax(dim=1)
    keep[torch.arange(len(y)), top] = True  # never empty
    return keep
