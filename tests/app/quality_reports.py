"""Quality reports as jobs store them, for the rendering tests: the version-2 shape of ``ml.quality.assess``
(CONTRACTS.md) and the shape jobs stored before it (kept: old jobs still hold it)."""

from __future__ import annotations

V2 = {
    "version": 2,
    "estimate": {
        "accuracy": 0.8125,
        "ci95": [0.7012, 0.8903],
        "basis": "audit",
        "audited_items": 64,
        "certain_items": 12,
        "warning": None,
    },
    "per_tag": [
        {"tag": "cat", "items": 120, "estimated_accuracy": 0.71, "audited": 20},
        {"tag": "dog", "items": 100, "estimated_accuracy": 0.86, "audited": 18},
        {"tag": "lynx", "items": 40, "estimated_accuracy": 0.64, "audited": 9},
        {"tag": "owl", "items": 60, "estimated_accuracy": 0.95, "audited": 17},
    ],
    "confusions": [
        {"tags": ["cat", "lynx"], "items": 31, "share": 0.42},
        {"tags": ["dog", "cat"], "items": 12, "share": 0.11},
    ],
    "calibration": {"method": "audit_cross_fitted", "temperature": 1.83, "items": 64},
    "epochs": [
        {"epoch": 1, "pll_loss": 1.52, "align_loss": 0.91, "label_churn": None, "holdout_acc": None},
        {"epoch": 2, "pll_loss": 1.11, "align_loss": 0.72, "label_churn": 0.21, "holdout_acc": 0.7},
        {"epoch": 3, "pll_loss": 0.93, "align_loss": 0.66, "label_churn": 0.08, "holdout_acc": 0.78},
    ],
    "next_step": "Review the 40 items tagged lynx: the model confuses lynx with cat.",
    "warnings": [],
    "estimated_accuracy": 0.8125,
}

#: Before version 2: no interval on the estimate, a hold-out, the calibration and per-epoch dicts.
LEGACY = {
    "estimated_accuracy": 0.853,
    "estimated_accuracy_model_labels": 0.841,
    "items": 30,
    "certain_items": 2,
    "model_labelled_items": 28,
    "holdout": None,
    "holdout_rule": {"share": 0.2, "min_items": 10},
    "calibration": {
        "method": "candidate_likelihood",
        "temperature": 1.0,
        "items": 30,
        "nll_before": 0.41,
        "nll_after": 0.41,
    },
    "epochs": [
        {"epoch": 1, "pll_loss": 2.01, "align_loss": 1.2, "label_churn": 0.4, "holdout_acc": None},
        {"epoch": 2, "pll_loss": 1.5, "align_loss": 1.0, "label_churn": 0.1, "holdout_acc": None},
    ],
    "final_label_churn": 0.1,
    "warnings": ["confidence calibrated on the candidate sets of training items (no known tags held out): optimistic"],
    "needs_review": 7,
}
