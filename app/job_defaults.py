"""Training-job defaults, as measured by ``tagsift bench reproduce`` (docs/results.md) and chosen on validation data.

Measured with the offline reference backbone effnetlite0-minilm on CIFAR-10 candidate sets, q in {0.1, 0.3, 0.5, 0.7}:

* few labelled items per class (16): prompt alignment (teacher from the handcrafted prompt, a = 0) + PiCO was the
  best on validation (52.7 % averaged over q; the linear probe was the worst, 27-35 % test at q = 0.3);
* many items per class (500): the linear probe + RC with lr 25, 100 epochs, was the best on validation (70.5 %
  averaged over q, against 63.5 % for prompt alignment + RC), and first with candidate sets pruned by neighbour
  voting plus the handcrafted classifier mixed in at inference (+0.8-1.4 points).

``method="auto"`` (the default) therefore picks by the dataset's size: the linear probe when there are at least
:data:`AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS` items per class, prompt alignment otherwise. Only 16 and 500 items per
class were measured; the threshold between them is a judgement (about the geometric mean), not a measurement.
Explicit ``loss``, ``epochs`` and ``lr`` always win over these defaults.
"""

from __future__ import annotations

#: Items per class from which ``method="auto"`` trains the linear probe instead of prompts.
AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS = 100

#: Per-method defaults (the best validated configuration of each method).
#: ``knn_vote``: candidate sets pruned by neighbour voting (k 10, tau 0.5) before training; ``handcrafted_mix``: the
#: 8-template zero-shot classifier mixed in at inference with that weight. Both ranked first on validation for the
#: linear probe on 500 items per class and did not help prompt alignment on 16 (docs/results.md, point 5).
METHOD_DEFAULTS: dict[str, dict] = {
    "prompt_alignment": {"loss": "pico", "epochs": 10, "lr": 0.002, "knn_vote": False, "handcrafted_mix": 0.0},
    "coop": {"loss": "cavl", "epochs": 10, "lr": 0.002, "knn_vote": False, "handcrafted_mix": 0.0},
    "linear_probe": {"loss": "rc", "epochs": 100, "lr": 25.0, "knn_vote": True, "handcrafted_mix": 0.5},
    # no training: the handcrafted prompt's classifier
    "zero_shot": {"loss": "rc", "epochs": 1, "lr": 0.002, "knn_vote": False, "handcrafted_mix": 0.0},
}


def auto_method(*, items: int, classes: int) -> str:
    """The method ``auto`` stands for on a dataset of ``items`` items over ``classes`` classes."""
    per_class = items / max(classes, 1)
    return "linear_probe" if per_class >= AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS else "prompt_alignment"


def resolve_job_params(params: dict, *, items: int, classes: int) -> dict:
    """Concrete job params: ``auto`` replaced by a method, and unset loss / epochs / lr filled for that method.

    The requested method is kept as ``requested_method`` so that a job says why it trains what it trains.
    """
    resolved = dict(params)
    requested = resolved.get("method") or "auto"
    method = auto_method(items=items, classes=classes) if requested == "auto" else requested
    resolved["method"] = method
    resolved["requested_method"] = requested
    for key, value in METHOD_DEFAULTS[method].items():
        if resolved.get(key) is None:
            resolved[key] = value
    return resolved


def describe_defaults() -> str:
    """The defaults in words, for the API's documentation (``POST /datasets/{id}/jobs``): built from the values
    above, so the description cannot drift from what a job really gets (tests/app/test_job_defaults.py)."""
    per_method = "; ".join(
        f"`{method}`: {d['loss']} loss, {d['epochs']} epochs, lr {d['lr']:g}"
        + (", neighbour-vote pruning" if d["knn_vote"] else "")
        + (f", handcrafted classifier mixed in at {d['handcrafted_mix']:g}" if d["handcrafted_mix"] else "")
        for method, d in METHOD_DEFAULTS.items()
    )
    return (
        f"Defaults: method `auto` trains `linear_probe` when the dataset has at least "
        f"{AUTO_LINEAR_PROBE_MIN_ITEMS_PER_CLASS} items per class, else `prompt_alignment`. "
        f"Per method, unless the body sets them: {per_method}."
    )
