"""The handcrafted prior as the data sees it, and the dataset's own feature graph (no true labels anywhere).

What the aligned head (``ml/aligned_head.py``, method ``aligned_head``) builds on:

* :func:`calibrate_prior`: a temperature T and a per-class bias b for the zero-shot logits z̃ = s·<f̂, t̃_k>, fitted
  by maximising the candidate likelihood  Σ_i log Σ_{k∈S_i} softmax(z̃_i / T + b)_k  − ‖b‖² (MAP, a Gaussian prior
  on b: with few items or uninformative sets the bias stays near zero). The true tag is always a candidate and the
  other candidates carry no information about the image, so this is the prior's likelihood of what the annotators
  said: a prior that is often right gets a small T (sharp), a useless prior a large T (flat).
* :func:`prior_trust`: how often the prior's top tag lies in the candidate set, against chance (the mean |S|/K):
  ρ = (hit − chance) / (1 − chance), clipped to [0, 1]. Under uniform candidate sets (each wrong tag joins with
  probability q) hit = A + q(1 − A) and chance = (1 + q(K − 1))/K, so ρ = (A − 1/K)/(1 − 1/K) whatever q: the
  prior's chance-corrected accuracy A, read without a single true label.
* :func:`knn_graph` and :func:`propagate`: label propagation over the k-nearest-neighbour graph of the training
  items' image features, restricted to each item's candidates (every item of a dataset is present at training
  time, so disambiguation is transductive):  F ← normalise(Y ⊙ ((1 − η) F0 + η · mean_{j∈N(i)} F_j)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Bounds of the fitted temperature (a useless prior ends at the top: its logits are then nearly flat).
T_RANGE = (0.05, 1000.0)


@torch.no_grad()
def prior_trust(hand_logits: torch.Tensor, mask: torch.Tensor) -> dict:
    """{hit, chance, estimate}: the share of items whose prior top tag is a candidate, the chance share (mean |S|/K)
    and ρ̂ = (hit − chance)/(1 − chance) clipped to [0, 1] (0 when every set holds every tag)."""
    y = mask.bool()
    n, k = y.shape
    top = hand_logits.argmax(dim=1)
    hit = float(y[torch.arange(n), top].float().mean())
    chance = float(y.float().sum(dim=1).mean()) / k
    estimate = 0.0 if chance >= 1.0 - 1e-9 else min(1.0, max(0.0, (hit - chance) / (1.0 - chance)))
    return {"hit": hit, "chance": chance, "estimate": estimate}


@torch.no_grad()
def prior_evidence(hand_logits: torch.Tensor, mask: torch.Tensor, t: float, bias: torch.Tensor) -> dict:
    """{evidence, shrink}: the likelihood-ratio statistic of the calibrated prior against knowing nothing,
    LR = 2 Σ_i [log Σ_{k∈S_i} softmax(z̃_i / T + b)_k − log(|S_i| / K)], and the share of the prior the data
    supports, shrink = max(0, 1 − (K + 1)/LR) (James-Stein: a prior that fits nothing but the K + 1 fitted numbers'
    noise has E[LR] ≈ K + 1 and is shrunk to nothing; a strong one keeps nearly all its weight)."""
    y = mask.bool().cpu()
    logits = hand_logits.float().cpu() / t + bias.float().cpu()
    ll = torch.logsumexp(logits.masked_fill(~y, float("-inf")), 1) - torch.logsumexp(logits, 1)
    base = torch.log(y.sum(dim=1).float() / y.shape[1])
    lr = max(0.0, 2.0 * float((ll - base).sum()))
    k = y.shape[1]
    return {"evidence": lr, "shrink": max(0.0, 1.0 - (k + 1) / lr) if lr > 0 else 0.0}


def calibrate_prior(hand_logits: torch.Tensor, mask: torch.Tensor, iters: int = 100) -> tuple[float, torch.Tensor]:
    """(T, b (K,)) maximising the candidate likelihood of softmax(z̃ / T + b) (module doc). b has mean zero.

    Items whose set holds every tag say nothing and are left out; with none left: T = the top of T_RANGE, b = 0.
    """
    z = hand_logits.detach().float().cpu()
    y = mask.bool().cpu()
    k = y.shape[1]
    informative = y.sum(dim=1) < k
    if not bool(informative.any()):
        return T_RANGE[1], torch.zeros(k)
    z, y = z[informative], y[informative]
    n = len(z)
    log_t = torch.zeros(1, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, b], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")
    lo, hi = (float(torch.tensor(v).log()) for v in T_RANGE)

    def nll() -> torch.Tensor:
        opt.zero_grad()
        logits = z / log_t.clamp(lo, hi).exp() + (b - b.mean())
        loss = (torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~y, float("-inf")), 1)).mean()
        loss = loss + (b * b).sum() / n  # MAP: a Gaussian prior on b against n items' mean log-likelihood
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be inside no_grad
        opt.step(nll)
    t = float(log_t.detach().clamp(lo, hi).exp())
    bias = (b - b.mean()).detach()
    if not (torch.isfinite(bias).all() and t == t):  # a failed fit: the raw prior
        return 1.0, torch.zeros(k)
    return t, bias


@torch.no_grad()
def knn_graph(features: torch.Tensor, k: int = 10, chunk: int = 4096) -> torch.Tensor:
    """(N, k') long: each item's k' = min(k, N − 1) nearest other items by cosine similarity (itself excluded)."""
    n = features.shape[0]
    if n < 2:
        return torch.zeros(n, 0, dtype=torch.long)
    k = max(1, min(k, n - 1))
    f = F.normalize(features.float(), dim=-1)
    out = []
    for start in range(0, n, chunk):
        sim = f[start : start + chunk] @ f.T  # [c, N]
        rows = torch.arange(start, min(start + chunk, n))
        sim[torch.arange(len(rows)), rows] = -float("inf")
        out.append(sim.topk(k, dim=1).indices)
    return torch.cat(out)


@torch.no_grad()
def neighbour_mean(values: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """(N, K) mean of each item's neighbours' rows of ``values`` (the rows themselves when there are none)."""
    if neighbours.shape[1] == 0:
        return values
    return values[neighbours].mean(dim=1)


@torch.no_grad()
def propagate(
    init: torch.Tensor, mask: torch.Tensor, neighbours: torch.Tensor, weight: float, iters: int = 10
) -> torch.Tensor:
    """(N, K) candidate-restricted label distributions after ``iters`` rounds of
    F ← normalise(Y ⊙ ((1 − weight)·init + weight·mean_{j∈N(i)} F_j)), starting from F = init."""
    y = mask.float().to(init.device)
    f0 = init.float() * y
    f0 = f0 / f0.sum(dim=1, keepdim=True).clamp_min(1e-12)
    out = f0
    for _ in range(iters):
        out = ((1 - weight) * f0 + weight * neighbour_mean(out, neighbours)) * y
        out = out / out.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return out


@torch.no_grad()
def graph_purity(mask: torch.Tensor, neighbours: torch.Tensor) -> float:
    """Estimated share of neighbour pairs with the same true tag, read from candidate-set overlaps only.

    Under uniform candidate sets with rate q, two items share 1 + (K - 1) q² candidates on average when their tags
    agree and 2q + (K - 2) q² when they differ: a difference of (1 - q)². So the neighbours' mean overlap O_nn and
    that of all pairs O_rand (whose tags agree with probability h_rand = Σ_k π_k², π the tag shares estimated
    from the sets) give h_nn = h_rand + (O_nn - O_rand) / (1 - q)², q estimated from the mean set size.
    Clipped to [0, 1]; 0 when there is no graph or q̂ = 1 (sets carry nothing).
    """
    y = mask.float()
    n, k = y.shape
    if neighbours.shape[1] == 0 or n < 2:
        return 0.0
    q = (float(y.sum(dim=1).mean()) - 1) / max(k - 1, 1)
    if q >= 1 - 1e-6:
        return 0.0
    o_nn = float((y[:, None, :] * y[neighbours]).sum(dim=-1).mean())
    col = y.sum(dim=0)  # mean overlap over all ordered pairs i != j, exactly
    o_rand = float(((col * col).sum() - y.sum()) / (n * (n - 1)))
    share = (y.mean(dim=0) - q) / max(1 - q, 1e-6)  # E[Y_k] = π_k + q (1 - π_k)  ->  π_k
    share = share.clamp_min(0)
    h_rand = float((share / share.sum().clamp_min(1e-12)).pow(2).sum())
    return min(1.0, max(0.0, h_rand + (o_nn - o_rand) / (1 - q) ** 2))
