"""How good a job's labels are, without true labels: held-out certain items, calibration, the expected accuracy.

A dataset has no ground truth, but some items have a tag that is certain (a reviewer's fix, a manifest ``label``).

* **Hold-out** (:func:`choose_holdout`): when at least :data:`MIN_HOLDOUT_ITEMS` items can be held out at
  :data:`HOLDOUT_SHARE` of the *informative* certain items (those whose original candidate set, with the tag, has at
  least two tags: a one-tag set is right whatever the model says), that share, stratified by tag and seeded, is
  kept out of training. The model labels them over their original candidate sets as if their tag were unknown; the
  share it gets right, with a Wilson 95% interval (:func:`wilson_interval`), is the measured label accuracy.
* **Calibration** (:func:`fit_temperature`): one temperature T divides the deployed classifier's logits
  (p = softmax(z / T) restricted to the candidates). With a hold-out, T minimises the held-out items' negative
  log-likelihood of their tag (``method = "holdout"``). Without one, T maximises the candidate-set likelihood
  Σ_i log Σ_{k∈S_i} softmax(z_i / T)_k over items whose set is informative (1 < |S| < K), the likelihood of the
  sets under uniform distractors (``"candidate_likelihood"``), kept >= 1 (this fit can only say the model is
  over-confident, never make it more confident; it is fitted on training items, so it is optimistic: the report
  carries a warning). No informative item at all: T = 1 (``"none"``).
* **Expected accuracy** (:func:`quality_report`): certain items count as right; every other item contributes its
  calibrated confidence, the probability that its label is right. ``estimated_accuracy`` is the mean over all items.

Everything here works on logits and masks (tensors in, plain dicts out): no rows, settings or storage.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Share of the informative certain items held out as validation.
HOLDOUT_SHARE = 0.2
#: Fewest held-out items worth measuring (so a hold-out needs >= 50 informative certain items at 20%).
MIN_HOLDOUT_ITEMS = 10
#: Temperatures searched (log-spaced grid, then refined).
T_RANGE = (1e-2, 1e3)
#: z of the two-sided 95% interval.
Z95 = 1.959963984540054


def choose_holdout(
    certain_tags: Sequence[str | None], original_candidates: Sequence[Sequence[str]], seed: int
) -> list[int]:
    """Indices of the certain items to hold out (sorted), or [] when fewer than MIN_HOLDOUT_ITEMS would be.

    Eligible: a certain tag and an original candidate set that, with the tag, has >= 2 tags. Stratified by tag:
    each tag gives about HOLDOUT_SHARE of its eligible items (seeded order).
    """
    eligible = [i for i, tag in enumerate(certain_tags) if tag is not None and len({*original_candidates[i], tag}) >= 2]
    n_hold = int(HOLDOUT_SHARE * len(eligible))
    if n_hold < MIN_HOLDOUT_ITEMS:
        return []
    rng = random.Random(f"holdout:{seed}")
    by_tag: dict[str, list[int]] = {}
    for i in eligible:
        by_tag.setdefault(str(certain_tags[i]), []).append(i)
    ranked = []  # (position within its tag / size of its tag, tie-break, item): proportional interleaving
    for tag in sorted(by_tag):
        items = by_tag[tag]
        rng.shuffle(items)
        ranked += [((r + 0.5) / len(items), rng.random(), i) for r, i in enumerate(items)]
    ranked.sort()
    return sorted(i for _, _, i in ranked[:n_hold])


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (correct / n); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def restricted_log_probs(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(N, K) log softmax(z / T) renormalised over each row's candidates (-inf outside them)."""
    z = (logits.float() / temperature).masked_fill(~mask.bool(), float("-inf"))
    return F.log_softmax(z, dim=1)


def _objective(logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None, t: float) -> float:
    """Mean negative log-likelihood at temperature t: of the tag (target given), else of the candidate set."""
    z = logits.float() / t
    if target is not None:
        return float(-restricted_log_probs(logits, mask, t).gather(1, target.view(-1, 1)).mean())
    inside = torch.logsumexp(z.masked_fill(~mask.bool(), float("-inf")), dim=1)
    return float((torch.logsumexp(z, dim=1) - inside).mean())


def fit_temperature(
    logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor | None = None, *, t_min: float | None = None
) -> float:
    """The temperature minimising :func:`_objective` (log-spaced grid over T_RANGE, then golden-section)."""
    lo, hi = math.log(max(T_RANGE[0], t_min or 0.0)), math.log(T_RANGE[1])
    grid = [lo + (hi - lo) * j / 120 for j in range(121)]
    values = [_objective(logits, mask, target, math.exp(g)) for g in grid]
    best = min(range(len(grid)), key=lambda j: (values[j], -grid[j]))  # ties (a flat objective): the softest
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if _objective(logits, mask, target, math.exp(c)) <= _objective(logits, mask, target, math.exp(d)):
            b = d
        else:
            a = c
    t = math.exp((a + b) / 2)
    return t if _objective(logits, mask, target, t) <= values[best] else math.exp(grid[best])


def calibrate(
    logits: torch.Tensor,
    mask: torch.Tensor,
    holdout: Sequence[int],
    holdout_mask: torch.Tensor | None,
    holdout_target: torch.Tensor | None,
    uncertain: Sequence[int],
) -> dict:
    """{"method", "temperature", "items", "nll_before", "nll_after"}: see the module doc for the three methods.

    holdout: rows of ``logits`` held out, with their original candidate masks and tags; uncertain: rows whose
    candidate set the candidate-likelihood fit may use (items not certain).
    """
    if len(holdout):
        z, m, y = logits[list(holdout)], holdout_mask, holdout_target
        t = fit_temperature(z, m, y)
        before, after = _objective(z, m, y, 1.0), _objective(z, m, y, t)
        return {"method": "holdout", "temperature": t, "items": len(holdout), "nll_before": before, "nll_after": after}
    k = mask.shape[1]
    rows = [i for i in uncertain if 1 < int(mask[i].sum()) < k]
    if not rows:
        return {"method": "none", "temperature": 1.0, "items": 0, "nll_before": None, "nll_after": None}
    z, m = logits[rows], mask[rows]
    t = fit_temperature(z, m, None, t_min=1.0)
    before, after = _objective(z, m, None, 1.0), _objective(z, m, None, t)
    return {
        "method": "candidate_likelihood",
        "temperature": t,
        "items": len(rows),
        "nll_before": before,
        "nll_after": after,
    }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def quality_report(
    *,
    confidence: torch.Tensor,
    certain: Sequence[bool],
    holdout_correct: torch.Tensor | None,
    holdout_correct_any_class: torch.Tensor | None,
    calibration: dict,
    history: Sequence,
) -> dict:
    """The job's quality report (a JSON-ready dict; docs/results.md, "Quality report", says what each field means).

    confidence: (N,) calibrated confidence of every item's label; certain: the items whose tag is given (right by
    definition); holdout_correct: (H,) bool, the held-out items labelled right over their original candidates
    (None without a hold-out), and over every class; history: the run's EpochMetrics.
    """
    n = len(certain)
    cert = torch.tensor([bool(c) for c in certain], dtype=torch.bool)
    conf = confidence.float().clone()
    model_conf = conf[~cert]
    expected = (float(cert.sum()) + float(model_conf.sum())) / max(n, 1)
    warnings = []
    holdout = None
    if holdout_correct is not None and len(holdout_correct):
        h, right = len(holdout_correct), int(holdout_correct.sum())
        lo, hi = wilson_interval(right, h)
        holdout = {
            "items": h,
            "correct": right,
            "accuracy": _r(right / h),
            "ci95": [_r(lo), _r(hi)],
            "accuracy_any_class": _r(float(holdout_correct_any_class.float().mean()))
            if holdout_correct_any_class is not None
            else None,
        }
    else:
        warnings.append(
            f"no hold-out: fewer than {MIN_HOLDOUT_ITEMS} certain items with two or more candidate tags could be "
            f"held out ({int(HOLDOUT_SHARE * 100)}% of them); the estimate is not checked against known tags. "
            f"Tag or review at least {math.ceil(MIN_HOLDOUT_ITEMS / HOLDOUT_SHARE)} such items to measure it."
        )
    if calibration["method"] == "candidate_likelihood":
        warnings.append(
            "confidence calibrated on the candidate sets of training items (no known tags held out): optimistic"
        )
    elif calibration["method"] == "none":
        warnings.append("confidence not calibrated (no informative candidate sets): optimistic")
    epochs = [
        {
            "epoch": h.epoch,
            "pll_loss": _r(h.pll_loss, 6),
            "align_loss": _r(h.align_loss, 6),
            "label_churn": _r(h.label_churn),
            "holdout_acc": _r(h.val_acc),
        }
        for h in history
    ]
    return {
        "estimated_accuracy": _r(min(max(expected, 0.0), 1.0)),
        "estimated_accuracy_model_labels": _r(float(model_conf.mean())) if len(model_conf) else None,
        "items": n,
        "certain_items": int(cert.sum()),
        "model_labelled_items": int((~cert).sum()),
        "holdout": holdout,
        "holdout_rule": {"share": HOLDOUT_SHARE, "min_items": MIN_HOLDOUT_ITEMS},
        "calibration": {
            **calibration,
            "temperature": _r(calibration["temperature"], 6),
            "nll_before": _r(calibration["nll_before"]),
            "nll_after": _r(calibration["nll_after"]),
        },
        "epochs": epochs,
        "final_label_churn": epochs[-1]["label_churn"] if epochs else None,
        "warnings": warnings,
    }
