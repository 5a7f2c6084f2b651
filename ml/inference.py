"""A deployable classifier's answers on image features: logits, class probabilities over candidate sets, labels.

A classifier here is (class matrix C, logit scale s, optional bias b) with logits z = s · normalise(f) C^T + b; every
method deploys as one (``ml.train.fit``'s result, ``ml.ensemble``'s mix, the exported head). Candidate sets are
(N, K) bool masks built from class-name lists by :func:`candidates_to_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def check_classnames(classnames: Sequence[str]) -> None:
    """ValueError naming the class when the class list is too short, has an empty or a duplicate name."""
    if len(classnames) < 2:
        raise ValueError(f"class list: need at least 2 classes, got {len(classnames)}")
    seen: dict[str, int] = {}
    for k, name in enumerate(classnames):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class {k}: empty class name")
        if name in seen:
            raise ValueError(f"class {k}: duplicate class name {name!r} (same as class {seen[name]})")
        seen[name] = k


def candidates_to_mask(candidates: Sequence[Sequence[str]], classnames: Sequence[str]) -> torch.Tensor:
    """(N, K) bool candidate mask; ValueError naming the item and the problem."""
    check_classnames(classnames)
    index = {c: k for k, c in enumerate(classnames)}
    mask = torch.zeros(len(candidates), len(classnames), dtype=torch.bool)
    for i, cands in enumerate(candidates):
        if isinstance(cands, str):
            raise ValueError(f"item {i}: candidates must be a list of class names, got the string {cands!r}")
        if len(cands) == 0:
            raise ValueError(f"item {i}: empty candidate set")
        for c in cands:
            if c not in index:
                raise ValueError(f"item {i}: candidate {c!r} is not in the class list")
            mask[i, index[c]] = True
    return mask


@torch.no_grad()
def class_logits(
    features: torch.Tensor, class_features: torch.Tensor, logit_scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, K) logits s · normalise(f) C^T + b of a deployable classifier."""
    f = F.normalize(features.float(), dim=-1)
    logits = logit_scale * f @ class_features.to(f.device).float().T
    return logits + bias.to(f.device) if bias is not None else logits


@torch.no_grad()
def candidate_probabilities(
    features: torch.Tensor,
    class_features: torch.Tensor,
    logit_scale: float,
    candidates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(N, K) class probabilities p = softmax((s · normalise(f) C^T + b) / T), renormalised over the candidates
    (a softmax over the candidates' logits: no underflow however large the logits)."""
    logits = class_logits(features, class_features, logit_scale, bias) / temperature  # [N, K]
    if candidates is not None:
        logits = logits.masked_fill(~candidates.to(logits.device).bool(), float("-inf"))
    return F.softmax(logits, dim=1)


def disambiguate(
    features: torch.Tensor,
    class_features: torch.Tensor,
    logit_scale: float,
    candidates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, confidence, margin) for (N, D) image features, restricted to candidates when given.

    p = softmax((s · normalise(f) C^T + b) / T), renormalised over the candidates; label = argmax; margin = p1 - p2.
    T (``temperature``, ml.quality's calibration) changes the confidences, never the labels.
    """
    p = candidate_probabilities(
        features, class_features, logit_scale, candidates=candidates, bias=bias, temperature=temperature
    )
    top = p.topk(2, dim=1)
    return top.indices[:, 0].cpu(), top.values[:, 0].cpu(), (top.values[:, 0] - top.values[:, 1]).cpu()
