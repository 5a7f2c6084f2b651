"""How good a job's labels are: a measurement on a random audit, or an estimate from the candidate sets.

One entry point, :func:`assess`, for the job pipeline and the live refit (docs/quality.md says how and why):

* **With audited items** (a uniformly random sample of the dataset whose true tag a person gave): the yardstick.
  Each audited item is labelled by the model over its own candidate set as if its tag were unknown; the audit's
  share right has a Wilson interval (``estimate.audit``). The headline is *prediction-powered* (Angelopoulos et al.
  2023): the mean calibrated confidence of the model-labelled items plus the mean error of the confidences measured
  on the audit (right - confidence). It is unbiased whatever the calibration, and narrower than the audit share's
  interval where the confidences are informative. The temperature is fitted on the audit **cross-fitted**
  (:data:`AUDIT_FOLDS` folds: each audited item is judged with a temperature fitted on the other folds only), a MAP
  fit with a normal prior on log T (``ml.calibration.LOG_T_PRIOR_SD`` around the consistency temperature, else 1):
  ten audited items all right no longer drive T to its floor.
* **No audited item, features given**: cross-fitted consistency with the candidate sets (``ml.consistency``): a
  linear head trained on the other folds' candidate sets predicts every class of the held-out fold; its temperature
  maximises the held-out candidate-set likelihood; its calibrated posterior over each item's candidates scores the
  deployed model's label. The deployed temperature is then the one whose mean confidence equals that estimate. An
  estimate, not a measurement: the report says so and how big an audit would make it one.
* **Neither**: the raw mean confidence, an interval from the certain share to 1 and a warning (``basis = "none"``).

Certain items (a person gave the tag: manifest labels, reviewers' fixes) count as right, but reviewers fix the
doubtful items, so they are never a random sample and never the yardstick. Tensors in, plain dicts out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ml.calibration import (
    LOG_T_PRIOR_SD,
    confidences,
    fit_audit_temperature,
    folds,
    match_temperature,
    restricted_log_probs,
    t_quantile,
    wilson_interval,
)
from ml.quality_report import AUDIT_MAX, AUDIT_MIN, AUDIT_SHARE, REVIEW_BELOW, audit_size, build_report

#: Folds of the audit's cross-fitted temperature (fewer when fewer items are audited).
AUDIT_FOLDS = 5
#: Below this many audited items the interval is also widened to the audit share's Wilson interval (the
#: prediction-powered interval is a large-sample one).
SMALL_AUDIT = 30


@dataclass
class Assessment:
    temperature: float
    labels: torch.Tensor  # (N,) long
    confidence: torch.Tensor  # (N,) calibrated probability that the label is right (1 for certain items)
    margin: torch.Tensor  # (N,) p1 - p2 over the candidates
    probs: torch.Tensor  # (N, K) calibrated, restricted to the candidates (one-hot for certain items)
    report: dict


def _clip01(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def audit_estimate(
    logits: torch.Tensor,
    mask: torch.Tensor,
    model_labels: torch.Tensor,
    audited: dict[int, int],
    rest: torch.Tensor,
    prior_t: float,
    seed: int,
    score_logits: torch.Tensor | None = None,
) -> dict:
    """Accuracy of the model's labels on the items ``rest`` (indices), measured on the audit (module doc).

    The confidences that predict right and wrong come from ``score_logits`` (the consistency estimate's out-of-fold
    copy of the model, scored the same way on audited and other items: the deployed logits of audited items are out
    of sample, those of the others in sample and sharper) or, without it, from the deployed ``logits``. Their
    temperature is fitted on the audit, cross-fitted. The deployed temperature: the MAP fit on the whole audit
    without a copy; with one, the temperature at which the model-labelled items' mean confidence is the estimate.
    Returns {"accuracy", "ci95", "temperature", "fold_temperatures", "folds", "audit": {items, right, share, ci95}}.
    """
    scores = logits if score_logits is None else score_logits
    idx = torch.tensor(sorted(audited), dtype=torch.long)
    y = torch.tensor([audited[int(i)] for i in idx], dtype=torch.long)
    z, m, lab = scores[idx], mask[idx], model_labels[idx]
    right = (lab == y).float()
    na, nr = len(idx), len(rest)
    fold_sets = folds(na, min(AUDIT_FOLDS, na), seed, "audit") if na >= 2 else [list(range(na))]
    temps, c_aud, c_rest = [], torch.zeros(na), torch.zeros(nr)
    for f in fold_sets:
        fit_on = [p for p in range(na) if p not in set(f)]
        t_j = fit_audit_temperature(z[fit_on], m[fit_on], y[fit_on], prior_t) if fit_on else prior_t
        temps.append(t_j)
        c_aud[f] = confidences(z[f], m[f], lab[f], t_j)
        if nr:
            c_rest += confidences(scores[rest], mask[rest], model_labels[rest], t_j) / len(fold_sets)
    resid = right - c_aud
    share = float(right.mean())
    w_lo, w_hi = wilson_interval(int(right.sum()), na)
    if nr:
        theta = float(c_rest.mean()) + float(resid.mean())
        var_e = max(float(resid.var()) if na > 1 else 0.25, float((c_aud * (1 - c_aud)).mean()))
        half = t_quantile(na - 1) * math.sqrt(var_e / na + (float(c_rest.var()) / nr if nr > 1 else 0.0))
        lo, hi = theta - half, theta + half
    else:
        theta, lo, hi = share, w_lo, w_hi
    if na < SMALL_AUDIT:
        lo, hi = min(lo, w_lo), max(hi, w_hi)
    if score_logits is None or not nr:
        t_dep = fit_audit_temperature(logits[idx], m, y, 1.0 if score_logits is not None else prior_t)
    else:
        t_dep = match_temperature(logits[rest], mask[rest], model_labels[rest], _clip01(theta))
    return {
        "accuracy": _clip01(theta),
        "ci95": [_clip01(lo), _clip01(hi)],
        "temperature": t_dep,
        "fold_temperatures": temps,
        "folds": [[int(idx[p]) for p in f] for f in fold_sets],
        "audit": {"items": na, "right": int(right.sum()), "share": share, "ci95": [w_lo, w_hi]},
    }


def assess(
    logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    classes: Sequence[str],
    certain: Sequence[bool],
    audited: dict[int, int] | None = None,
    features: torch.Tensor | None = None,
    history: Sequence = (),
    seed: int = 0,
) -> Assessment:
    """Labels, calibrated confidences and the quality report of a deployed classifier (module doc).

    logits (N, K) before any temperature; mask (N, K) each item's candidate set: for an audited item its own set
    (with the tag in it: the model is judged over it), for a certain item its set or just its tag; certain[i]: a
    person gave item i's tag; audited {item index: true class index}; features (N, D) for the consistency estimate.
    """
    from ml.consistency import consistency_estimate

    logits, mask = logits.detach().float().cpu(), mask.detach().bool().cpu().clone()
    n, k = logits.shape
    if len(certain) != n or mask.shape != (n, k) or len(classes) != k:
        raise ValueError(f"assess: logits {tuple(logits.shape)}, mask {tuple(mask.shape)}, {len(certain)} certain")
    audited = {int(i): int(t) for i, t in (audited or {}).items()}
    for i, t in audited.items():
        if not (0 <= i < n and 0 <= t < k):
            raise ValueError(f"audited item {i}: index or class {t} out of range")
        mask[i, t] = True
    model_labels = restricted_log_probs(logits, mask).argmax(dim=1)
    known = torch.tensor([bool(c) for c in certain], dtype=torch.bool)
    if audited:
        known[list(audited)] = True
    rest = (~known).nonzero().flatten()
    consistency = None
    if features is not None:
        consistency = consistency_estimate(features, logits, mask, model_labels, rest, seed=seed)
    if audited:
        prior_t, copy = (consistency["head_temperature"], consistency["oof_logits"]) if consistency else (1.0, None)
        est = audit_estimate(logits, mask, model_labels, audited, rest, prior_t, seed, score_logits=copy)
        basis = "audit"
    elif consistency is not None:
        basis, est = "consistency", consistency
    else:
        basis, est = "none", _no_estimate(logits, mask, model_labels, rest)
    t = float(est["temperature"])
    labels = model_labels.clone()
    for i, tag in audited.items():
        labels[i] = tag
    probs = restricted_log_probs(logits, mask, t).exp()
    probs[known] = 0.0
    probs[known, labels[known]] = 1.0
    confidence = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    top2 = probs.topk(min(2, k), dim=1).values
    margin = top2[:, 0] - (top2[:, 1] if k > 1 else 0.0)
    report = build_report(
        basis=basis,
        est=est,
        consistency=consistency,
        classes=classes,
        labels=labels,
        confidence=confidence,
        probs=probs,
        mask=mask,
        known=known,
        certain=certain,
        audited=audited,
        history=history,
    )
    return Assessment(temperature=t, labels=labels, confidence=confidence, margin=margin, probs=probs, report=report)


def _no_estimate(logits: torch.Tensor, mask: torch.Tensor, model_labels: torch.Tensor, rest: torch.Tensor) -> dict:
    """Neither an audit nor features: the raw mean confidence (T = 1), an interval that says nothing."""
    c = confidences(logits[rest], mask[rest], model_labels[rest], 1.0) if len(rest) else torch.ones(1)
    return {"accuracy": float(c.mean()), "ci95": [0.0, 1.0], "temperature": 1.0}


__all__ = [
    "AUDIT_MAX",
    "AUDIT_MIN",
    "AUDIT_SHARE",
    "LOG_T_PRIOR_SD",
    "REVIEW_BELOW",
    "Assessment",
    "assess",
    "audit_estimate",
    "audit_size",
    "wilson_interval",
]
