"""Training-job defaults, as measured by ``tagsift bench reproduce`` (docs/results.md) and chosen on validation data.

Measured with the offline reference backbone effnetlite0-minilm on CIFAR-10 and scikit-learn's digits, candidate
sets with q in {0.3, 0.7}, 16 items per class and many (about 256 per class on CIFAR-10, 2,558 items, and a later
run at 500 per class; the whole training pool on digits); docs/results.md, "One default method for every dataset
size", which also lists the goals this misses (at 500 per class and q = 0.7 it is 3.4 test points under the
previous default, the kNN-pruned linear probe):

* ``method="auto"`` (the default) is the **aligned head** (``ml/aligned_head.py``) at every dataset size: a linear
  head that starts as the handcrafted prompt's classifier (calibrated on the candidate sets, and shrunk as far as
  the candidate sets fail to support it) and is held near it by a decay that weakens as the dataset grows
  (``prior_strength`` / items), trained with RC and the paper's alignment target, whose mixing weight is read from
  the data (``mix="trust"``: how often the prior's top tag falls in the candidate sets, against chance, times the
  share of the prior the sets support). The feature-graph propagation (``graph_weight``) was measured and is not
  part of the default. It replaced a switch at 100 items per class between prompt alignment + PiCO and the linear
  probe: see :data:`AUTO_METHOD`.
* the other methods keep their best validated configuration (``prompt_alignment``: PiCO, 10 epochs; ``linear_probe``:
  RC, lr 25, neighbour-vote pruning and the 8-template handcrafted classifier mixed in at inference).

Explicit ``loss``, ``epochs``, ``lr`` and the other method defaults always win over these defaults.
"""

from __future__ import annotations

#: The method ``auto`` stands for, whatever the dataset's size.
AUTO_METHOD = "aligned_head"

#: Per-method defaults (the best validated configuration of each method).
#: ``knn_vote``: candidate sets pruned by neighbour voting (k 10, tau 0.5) before training; ``handcrafted_mix``: the
#: 8-template zero-shot classifier mixed in at inference with that weight. Both ranked first on validation for the
#: linear probe on 500 items per class and did not help prompt alignment on 16 (docs/results.md, point 5).
#: ``aligned_head``: ``mix``, ``prior_strength`` and ``graph_weight`` as chosen on validation (docs/results.md).
METHOD_DEFAULTS: dict[str, dict] = {
    "aligned_head": {
        "loss": "rc",
        "epochs": 50,
        "lr": 0.1,
        "knn_vote": False,
        "handcrafted_mix": 0.0,
        "mix": "trust",
        "prior_strength": 3000.0,
        "graph_weight": 0.0,
    },
    "prompt_alignment": {"loss": "pico", "epochs": 10, "lr": 0.002, "knn_vote": False, "handcrafted_mix": 0.0},
    "coop": {"loss": "cavl", "epochs": 10, "lr": 0.002, "knn_vote": False, "handcrafted_mix": 0.0},
    "linear_probe": {"loss": "rc", "epochs": 100, "lr": 25.0, "knn_vote": True, "handcrafted_mix": 0.5},
    # no training: the handcrafted prompt's classifier
    "zero_shot": {"loss": "rc", "epochs": 1, "lr": 0.002, "knn_vote": False, "handcrafted_mix": 0.0},
}

#: Defaults that only hold with RC (the feature graph propagates RC's confidences): left out with another loss.
_RC_ONLY = ("graph_weight",)


def auto_method(*, items: int, classes: int) -> str:
    """The method ``auto`` stands for (the same at every size; the arguments stay for callers that pass them)."""
    del items, classes
    return AUTO_METHOD


def resolve_job_params(params: dict, *, items: int, classes: int) -> dict:
    """Concrete job params: ``auto`` replaced by a method, and unset loss / epochs / lr / ... filled for that method.

    The requested method is kept as ``requested_method`` so that a job says why it trains what it trains.
    """
    resolved = dict(params)
    requested = resolved.get("method") or "auto"
    method = auto_method(items=items, classes=classes) if requested == "auto" else requested
    resolved["method"] = method
    resolved["requested_method"] = requested
    if resolved.get("loss") is None:
        resolved["loss"] = METHOD_DEFAULTS[method]["loss"]
    for key, value in METHOD_DEFAULTS[method].items():
        if key in _RC_ONLY and resolved["loss"] != "rc":
            continue
        if resolved.get(key) is None:
            resolved[key] = value
    return resolved


def param_problems(params: dict) -> list[tuple[str, str]]:
    """(field, message) for resolved params that ml would refuse (an API 422 instead of a failed job)."""
    problems = []
    if (params.get("graph_weight") or 0) > 0 and params.get("loss") != "rc":
        problems.append(("graph_weight", f"the feature graph propagates RC's confidences; loss {params.get('loss')!r}"))
    if params.get("mix") == "trust" and params.get("method") not in ("prompt_alignment", "aligned_head"):
        problems.append(("mix", f"'trust' needs a handcrafted teacher; method {params.get('method')!r} has none"))
    return problems


def describe_defaults() -> str:
    """The defaults in words, for the API's documentation (``POST /datasets/{id}/jobs``): built from the values
    above, so the description cannot drift from what a job really gets (tests/app/test_job_defaults.py)."""
    per_method = "; ".join(
        f"`{method}`: {d['loss']} loss, {d['epochs']} epochs, lr {d['lr']:g}"
        + (", neighbour-vote pruning" if d["knn_vote"] else "")
        + (f", handcrafted classifier mixed in at {d['handcrafted_mix']:g}" if d["handcrafted_mix"] else "")
        + (f", teacher mix {d['mix']}" if d.get("mix") else "")
        + (f", prior strength {d['prior_strength']:g}" if d.get("prior_strength") else "")
        + (f", feature graph weight {d['graph_weight']:g}" if d.get("graph_weight") else "")
        for method, d in METHOD_DEFAULTS.items()
    )
    return (
        f"Defaults: method `auto` trains `{AUTO_METHOD}` at every dataset size. "
        f"Per method, unless the body sets them: {per_method}."
    )
