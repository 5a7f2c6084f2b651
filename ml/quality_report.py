"""The quality report ml.quality.assess returns (JSON-ready; docs/quality.md lists every field)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

REPORT_VERSION = 2
#: The audit a user gets by default: 5% of the items, at least 50, at most 300 (issue 22).
AUDIT_SHARE, AUDIT_MIN, AUDIT_MAX = 0.05, 50, 300
#: A label whose calibrated confidence is below this needs review (the worker's review_confidence default).
REVIEW_BELOW = 0.9
#: Tag pairs listed under "confusions".
TOP_CONFUSIONS = 5
#: A pair counts as confused on an item when both are its top two candidates and the margin is below this.
CONFUSION_MARGIN = 0.5


def audit_size(n: int) -> int:
    """Items a default audit draws from a dataset of n: 5%, at least 50, at most 300 (never more than n)."""
    return min(n, max(AUDIT_MIN, min(AUDIT_MAX, math.ceil(AUDIT_SHARE * n))))


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def _per_tag(classes, labels, confidence, audited) -> list[dict]:
    out = []
    audited_by_tag = {}
    for t in audited.values():
        audited_by_tag[t] = audited_by_tag.get(t, 0) + 1
    for k, tag in enumerate(classes):
        rows = labels == k
        items = int(rows.sum())
        acc = float(confidence[rows].mean()) if items else None
        out.append({"tag": tag, "items": items, "estimated_accuracy": _r(acc), "audited": audited_by_tag.get(k, 0)})
    return out


def _confusions(classes, probs, mask, known) -> list[dict]:
    rows = (~known) & (mask.sum(1) > 1)
    if not bool(rows.any()):
        return []
    top = probs[rows].topk(2, dim=1)
    close = (top.values[:, 0] - top.values[:, 1]) < CONFUSION_MARGIN
    pairs: dict[tuple[int, int], int] = {}
    for a, b in top.indices[close].tolist():
        key = (min(a, b), max(a, b))
        pairs[key] = pairs.get(key, 0) + 1
    total = int(rows.sum())
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CONFUSIONS]
    return [{"tags": [classes[a], classes[b]], "items": c, "share": _r(c / total)} for (a, b), c in ranked]


def _epochs(history: Sequence) -> list[dict]:
    return [
        {
            "epoch": h.epoch,
            "pll_loss": _r(h.pll_loss, 6),
            "align_loss": _r(h.align_loss, 6),
            "label_churn": _r(h.label_churn),
            "holdout_acc": _r(h.val_acc),
        }
        for h in history
    ]


def _dataset_level(est: dict, n: int, n_known: int) -> tuple[float, list[float]]:
    """The share of right labels over all items: known items right, the others at the model labels' accuracy."""
    n_model = n - n_known
    acc = (n_known + est["accuracy"] * n_model) / max(n, 1)
    lo, hi = ((n_known + x * n_model) / max(n, 1) for x in est["ci95"])
    return acc, [lo, hi]


def _words(basis: str, est: dict, n: int, audit_n: int, n_flagged: int) -> tuple[str | None, str]:
    """(warning, next step) in plain words."""
    if basis == "audit":
        lo, hi = est["ci95"]
        warning = None
        if est["audit"]["items"] < audit_n:
            warning = (
                f"measured on {est['audit']['items']} audited items: the interval narrows as the audit of "
                f"{audit_n} items is answered"
            )
        if hi - lo > 0.1:
            step = f"Answer more audit items (the interval is {100 * (hi - lo):.0f} points wide)."
        else:
            step = f"Review the {n_flagged} flagged items, lowest confidence first." if n_flagged else "Export."
        return warning, step
    what = (
        "estimated from the model's consistency with the candidate sets (a copy of the model trained on other "
        "items, checked against these items' sets), "
        if basis == "consistency"
        else "the model's own mean confidence, uncalibrated (no features to check it against), "
    )
    warning = (
        f"Not yet measured: {what}not from known tags. An audit of {audit_n} randomly drawn items answered by a "
        f"person would make it a measurement."
    )
    return warning, f"Run an audit of {audit_n} items to measure the accuracy."


def build_report(
    *,
    basis: str,
    est: dict,
    consistency: dict | None,
    classes: Sequence[str],
    labels: torch.Tensor,
    confidence: torch.Tensor,
    probs: torch.Tensor,
    mask: torch.Tensor,
    known: torch.Tensor,
    certain: Sequence[bool],
    audited: dict[int, int],
    history: Sequence,
) -> dict:
    n = len(labels)
    n_known = int(known.sum())
    n_certain = sum(1 for i, c in enumerate(certain) if c and i not in audited)
    acc, ci = _dataset_level(est, n, n_known)
    n_flagged = int((confidence < REVIEW_BELOW).sum())
    warning, step = _words(basis, est, n, audit_size(n), n_flagged)
    epochs = _epochs(history)
    method = {"audit": "audit_crossfit_map", "consistency": "consistency_match", "none": "none"}[basis]
    calibration = {"method": method, "temperature": _r(est["temperature"], 6), "items": len(audited)}
    if basis == "audit":
        calibration.update(
            folds=len(est["folds"]),
            fold_temperatures=[_r(t, 6) for t in est["fold_temperatures"]],
            scored_by="out-of-fold copy" if consistency else "deployed model",
            prior={
                "log_t_mean": _r(math.log(consistency["head_temperature"]) if consistency else 0.0),
                "log_t_sd": 1.0,
            },
        )
    elif basis == "consistency":
        calibration.update(items=est["items"], head_temperature=_r(est["head_temperature"], 6))
    audit = est.get("audit")
    holdout = None
    if audit:
        holdout = {"items": audit["items"], "correct": audit["right"], "accuracy": _r(audit["share"])}
        holdout["ci95"] = [_r(x) for x in audit["ci95"]]
    cons = None
    if consistency:
        cons = {k: _r(v) if isinstance(v, float) else v for k, v in consistency.items() if k != "oof_logits"}
        cons["ci95"] = [_r(x) for x in consistency["ci95"]]
    return {
        "version": REPORT_VERSION,
        "estimate": {
            "accuracy": _r(acc),
            "ci95": [_r(x) for x in ci],
            "basis": basis,
            "audited_items": len(audited),
            "certain_items": n_certain,
            "warning": warning,
            "model_labelled_items": n - n_known,
            "model_label_accuracy": _r(est["accuracy"]),
            "model_label_ci95": [_r(x) for x in est["ci95"]],
            "audit": {**audit, "share": _r(audit["share"]), "ci95": [_r(x) for x in audit["ci95"]]} if audit else None,
            "consistency": cons,
        },
        "per_tag": _per_tag(classes, labels, confidence, audited),
        "confusions": _confusions(classes, probs, mask, known),
        "calibration": calibration,
        "epochs": epochs,
        "final_label_churn": epochs[-1]["label_churn"] if epochs else None,
        "next_step": step,
        "warnings": [warning] if warning else [],
        "estimated_accuracy": _r(acc),
        "items": n,
        "certain_items": n_certain,
        "model_labelled_items": n - n_known,
        "holdout": holdout,
    }
