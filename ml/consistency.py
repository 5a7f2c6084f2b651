"""Cross-fitted consistency with the candidate sets: an accuracy estimate without a single known tag.

Under uniform distractors (each wrong tag joins an item's set with the same probability q, whatever the image), the
likelihood of an item's set given its image is Σ_{y∈S} p(y | x) times a factor that does not depend on the model. So
a model that predicts every class can be calibrated on the sets alone, *if* it did not train on them: the deployed
model trained on each item's own set puts its top class inside it whatever the truth (the degenerate fit this
replaces: T at its floor, the estimate the mean raw confidence).

1. The items are split into :data:`CONSISTENCY_FOLDS` seeded folds. For each fold a linear head on the standardised
   features learns, from the *other* folds, the deployed model's labels (an out-of-fold copy of the deployed model:
   it agrees with it far more than a head trained on the sets alone, whose posterior would score the deployed
   labels low wherever the two disagree) and predicts every class of the held-out fold.
2. One temperature maximises the held-out candidate-set likelihood of those out-of-fold logits over the items with
   an informative set (1 < |S| < K): where the copy's top class is wrong it falls inside the set only at the
   distractor rate, so the fit sees how often it is wrong.
3. The calibrated posterior over an item's candidates, p(y | x, S) ∝ p(y | x) for y in S (the distractors' factor
   cancels), scores the deployed model's label: the estimate is the mean over the model-labelled items; the deployed
   temperature is the one whose mean confidence equals it.

Its interval adds the spread between folds, the sampling noise of the items and a stated allowance
(:data:`ALLOWANCE_AT` / (1 - q)) for what is not noise: the copy is not the deployed model, the deployed labels it
learns were shaped by other items' sets (a leak: wrong top tags then land inside the sets more often than q), and
real distractors are not uniform. The share of out-of-fold top tags outside the sets divided by (1 - q), q from the
mean set size, is reported as a cross-check (the copy's error rate over every class).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from ml.calibration import Z95, confidences, fit_candidate_temperature, folds, match_temperature

#: Folds of the out-of-fold head.
CONSISTENCY_FOLDS = 5
#: Most items the head trains on per fold (a seeded sample beyond that keeps a refit of a large dataset fast).
MAX_TRAIN = 20_000
#: Full-batch Adam steps of the head, its learning rate and weight decay.
HEAD_STEPS, HEAD_LR, HEAD_L2 = 150, 0.02, 1e-3
#: Fewest model-labelled items with an informative candidate set (1 < |S| < K) for an estimate.
MIN_ITEMS = 10
#: Systematic allowance (accuracy, either side) added to the interval: ALLOWANCE_AT / (1 - q), within ALLOWANCE_RANGE.
#: A leak of δ in P(wrong top tag inside the set) (the copy learns labels that other items' sets shaped, e.g. through
#: neighbour-vote pruning) shifts the estimated error by about δ · error / (1 - q): the same leak costs more at high q.
#: Chosen on the development split (CIFAR-10 train images; docs/quality.md): 0.80 inside against q = 0.70 there.
ALLOWANCE_AT, ALLOWANCE_RANGE = 0.03, (0.03, 0.15)


def standardise(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised features, centred and scaled per dimension (a linear head's Adam steps then suit every
    backbone)."""
    f = F.normalize(features.detach().float().cpu(), dim=1)
    return (f - f.mean(0)) / f.std(0).clamp_min(1e-6)


def train_head(x: torch.Tensor, labels: torch.Tensor, k: int, steps: int = HEAD_STEPS) -> tuple:
    """(W (D, K), b (K,)) of a linear head learning ``labels`` (cross-entropy + weight decay; full batch, from zero:
    deterministic)."""
    w = torch.zeros(x.shape[1], k, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=HEAD_LR)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, labels) + HEAD_L2 * (w * w).sum()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def out_of_fold_logits(
    features: torch.Tensor, labels: torch.Tensor, k: int, seed: int
) -> tuple[torch.Tensor, list[list[int]]]:
    """(N, K) logits of every item from a head trained on the other folds' ``labels``, and the folds."""
    x = standardise(features)
    n = len(x)
    fold_sets = folds(n, CONSISTENCY_FOLDS, seed, "consistency")
    out = torch.zeros(n, k)
    rng = random.Random(f"consistency-sample:{seed}")
    with torch.enable_grad():
        for f in fold_sets:
            held = set(f)
            train = [i for i in range(n) if i not in held]
            if len(train) > MAX_TRAIN:
                train = sorted(rng.sample(train, MAX_TRAIN))
            w, b = train_head(x[train], labels[train], k)
            out[f] = x[f] @ w + b
    return out, fold_sets


def consistency_estimate(
    features: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor,
    model_labels: torch.Tensor,
    rest: torch.Tensor,
    *,
    seed: int = 0,
) -> dict | None:
    """The estimated accuracy of ``model_labels`` on the items ``rest`` (module doc), or None when too few of them
    have an informative set. Keys: accuracy, ci95, temperature (deployed), head_temperature, items, folds,
    distractor_rate, head_outside_share, head_error_any_class, allowance."""
    n, k = mask.shape
    if features is None or len(features) != n:
        return None
    sizes = mask.sum(1)
    informative = rest[(sizes[rest] > 1) & (sizes[rest] < k)]
    if len(informative) < MIN_ITEMS:
        return None
    z, fold_sets = out_of_fold_logits(features, model_labels, k, seed)
    t_head = fit_candidate_temperature(z[informative], mask[informative])
    c = confidences(z[rest], mask[rest], model_labels[rest], t_head)
    theta = float(c.mean())
    in_rest = torch.zeros(n, dtype=torch.bool)
    in_rest[rest] = True
    position = torch.full((n,), -1, dtype=torch.long)
    position[rest] = torch.arange(len(rest))
    per_fold = [float(c[position[f][in_rest[f]]].mean()) for f in fold_sets if bool(in_rest[f].any())]
    spread = float(torch.tensor(per_fold).std()) / math.sqrt(len(per_fold)) if len(per_fold) > 1 else 0.0
    sampling = math.sqrt(float((c * (1 - c)).sum())) / len(c)
    q = float((sizes[rest].float().mean() - 1) / max(k - 1, 1))
    allowance = min(max(ALLOWANCE_AT / max(1 - q, 1e-6), ALLOWANCE_RANGE[0]), ALLOWANCE_RANGE[1])
    half = Z95 * math.hypot(spread, sampling) + allowance
    outside = float((~mask[informative].gather(1, z[informative].argmax(1, keepdim=True))).float().mean())
    t_dep = match_temperature(logits[rest], mask[rest], model_labels[rest], theta)
    return {
        "accuracy": min(max(theta, 0.0), 1.0),
        "ci95": [max(theta - half, 0.0), min(theta + half, 1.0)],
        "temperature": t_dep,
        "head_temperature": t_head,
        "items": len(informative),
        "folds": len(fold_sets),
        "distractor_rate": q,
        "head_outside_share": outside,
        "head_error_any_class": min(outside / max(1 - q, 1e-6), 1.0),
        "allowance": allowance,
        "oof_logits": z,  # the out-of-fold copy's logits (the audit's scores; not in the report)
    }
