"""Statistics behind ml/quality.py: binomial and t intervals, temperature fits (MAP on known tags, candidate-set
likelihood), seeded folds, confidence matching. Tensors in, floats out."""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

#: Temperatures searched (log-spaced grid, then refined).
T_RANGE = (1e-2, 1e3)
#: z of the two-sided 95% interval.
Z95 = 1.959963984540054
#: Standard deviation of the normal prior on log T in the audit fit (a factor e either way is one sd).
LOG_T_PRIOR_SD = 1.0


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (correct / n); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile(df: int, z: float = Z95) -> float:
    """Student t quantile matching normal quantile z (Cornish-Fisher; within 1% for df >= 3, conservative below)."""
    if df <= 0:
        return 12.71
    v = float(df)
    return z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v * v)


def restricted_log_probs(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, K) log softmax(z / T) renormalised over each row's candidates (-inf outside them)."""
    z = (logits.float() / temperature).masked_fill(~mask.bool(), float("-inf"))
    return F.log_softmax(z, dim=1)


def candidate_nll(logits: torch.Tensor, mask: torch.Tensor, t: float) -> float:
    """Mean negative log-likelihood of the candidate sets at temperature t: -log Σ_{k∈S} softmax(z / t)_k."""
    z = logits.float() / t
    inside = torch.logsumexp(z.masked_fill(~mask.bool(), float("-inf")), dim=1)
    return float((torch.logsumexp(z, dim=1) - inside).mean())


def tag_nll(logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, t: float) -> float:
    """Summed negative log-likelihood of the true tags over the candidates at temperature t."""
    return float(-restricted_log_probs(logits, mask, t).gather(1, target.view(-1, 1)).sum())


def minimise_log_t(objective, lo: float = math.log(T_RANGE[0]), hi: float = math.log(T_RANGE[1])) -> float:
    """The temperature minimising ``objective(log_t)``: log-spaced grid, then golden-section around the best."""
    grid = [lo + (hi - lo) * j / 120 for j in range(121)]
    values = [objective(g) for g in grid]
    best = min(range(len(grid)), key=lambda j: (values[j], -grid[j]))  # ties (a flat objective): the softest
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if objective(c) <= objective(d):
            b = d
        else:
            a = c
    mid = (a + b) / 2
    return math.exp(mid if objective(mid) <= values[best] else grid[best])


def fit_audit_temperature(
    logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, prior_t: float = 1.0, sd: float = LOG_T_PRIOR_SD
) -> float:
    """MAP temperature of the audited tags: Σ NLL + (log T - log prior_t)² / (2 sd²) (the prior keeps a small,
    all-right audit from driving T to its floor: the NLL alone falls monotonically as T -> 0 there)."""
    centre = math.log(prior_t)

    def objective(g: float) -> float:
        return tag_nll(logits, mask, target, math.exp(g)) + (g - centre) ** 2 / (2 * sd * sd)

    return minimise_log_t(objective)


def fit_candidate_temperature(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Temperature maximising the candidate-set likelihood of out-of-fold logits (uniform distractors)."""
    return minimise_log_t(lambda g: candidate_nll(logits, mask, math.exp(g)))


def folds(n: int, k: int, seed: int, salt: str) -> list[list[int]]:
    """n positions split into k seeded folds of near-equal size (positions sorted within a fold)."""
    order = list(range(n))
    random.Random(f"{salt}:{seed}").shuffle(order)
    return [sorted(order[j::k]) for j in range(k)]


def confidences(logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """(N,) restricted probability of each row's label at temperature t."""
    return restricted_log_probs(logits, mask, t).gather(1, labels.view(-1, 1)).squeeze(1).exp()


def match_temperature(logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, target: float) -> float:
    """The temperature at which the mean restricted confidence of ``labels`` (each row's argmax) equals ``target``
    (bisection on log T: an argmax's probability never rises with T); clamped to T_RANGE."""
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    if not len(labels):
        return 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if float(confidences(logits, mask, labels, math.exp(mid)).mean()) > target:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _clip01(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)
