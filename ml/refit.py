"""The live refit: a job's deployed head trained again on its cached features after review decisions.

Every model tagsift deploys is linear in the image features: ``logits = s · f C^T + b`` (``head.npz``: the class
matrix ``C``, the bias ``b``, the scale ``s`` with the temperature folded in), whatever the job's method. A refit
starts from that head and trains ``W = s·C`` and ``b`` (full batch, Adam) on the items' clean features (view 0 of the
job's feature cache: no image is read, decoded or encoded) with

- the **certain items** (reviewers' tags, manifest labels, audited items) as targets: mean cross-entropy, weighted
  ``certain_weight`` against the rest;
- every other item's **candidate set**: the candidate-set likelihood ``-log Σ_{k∈S} p_k`` (the PLL "CC" loss), on at
  most ``max_uncertain`` of them (a seeded sample: the cost of a refit stays bounded at 100,000 items);
- an L2 pull of ``W`` and ``b`` towards the job's head (``anchor``): a few decisions move the boundary near them and
  leave the rest of what the job learned in place.

For a prompt method (``coop``, ``prompt_alignment``) the head's ``C`` is the text tower's output for the learned
prompts; a refit trains that matrix and the bias directly, not the prompt vectors (that would need the text
tower): the refit model is the job's model with a corrected linear head. The next full job learns prompts again.

:func:`relabel` then labels every item over its own candidates; the calibration and the quality report are
``ml.quality``'s (the caller's ``assess``). Plain tensors in and out: no rows, no storage.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class LinearHead:
    """``logits = f @ weight.T + bias`` for unit-length features ``f`` (the scale is folded into ``weight``)."""

    weight: torch.Tensor  # (K, D) float32
    bias: torch.Tensor  # (K,) float32

    @classmethod
    def from_export(cls, class_features, logit_scale: float, bias=None) -> LinearHead:
        """The head of ``head.npz``'s arrays (``class_features`` (K, D), ``logit_scale``, ``bias`` or None)."""
        w = torch.as_tensor(class_features, dtype=torch.float32) * float(logit_scale)
        b = torch.zeros(w.shape[0]) if bias is None else torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
        return cls(w.contiguous(), b.contiguous())

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weight.T + self.bias


@dataclasses.dataclass(frozen=True)
class RefitConfig:
    steps: int = 40
    lr: float = 0.05  # Adam's step on the relative change of W (W = W0 · (1 + Δ)-like: see _train)
    certain_weight: float = 1.0  # the certain items' mean loss against the candidate sets' mean loss
    anchor: float = 0.05  # the L2 pull towards the job's head, on the relative change
    max_uncertain: int = 20000
    seed: int = 0


@dataclasses.dataclass
class RefitOutcome:
    head: LinearHead
    logits: torch.Tensor  # (N, K) of the refit head, before any temperature
    seconds: float
    certain_items: int
    trained_items: int


def refit(
    features: torch.Tensor,
    mask: torch.Tensor,
    base: LinearHead,
    targets: torch.Tensor,
    config: RefitConfig | None = None,
) -> RefitOutcome:
    """Train ``base`` again (see the module doc). ``features`` (N, D) unit-length clean features; ``mask`` (N, K) bool
    candidate sets; ``targets`` (N,) long: the certain tag's index, or -1 for an item no person decided."""
    cfg = config or RefitConfig()
    started = time.perf_counter()
    feats = features.float()
    mask = mask.bool()
    targets = targets.long()
    certain = (targets >= 0).nonzero().flatten()
    uncertain = (targets < 0).nonzero().flatten()
    informative = uncertain[(mask[uncertain].sum(1) > 1)]  # a single-candidate item's loss is 0: nothing to learn
    if informative.numel() > cfg.max_uncertain:
        gen = torch.Generator().manual_seed(cfg.seed)
        informative = informative[torch.randperm(informative.numel(), generator=gen)[: cfg.max_uncertain]]
    head = base
    if certain.numel() or informative.numel():
        head = _train(feats, mask, base, targets, certain, informative, cfg)
    with torch.no_grad():
        logits = head.logits(feats)
    return RefitOutcome(head, logits, time.perf_counter() - started, int(certain.numel()), int(informative.numel()))


def _train(feats, mask, base: LinearHead, targets, certain, informative, cfg: RefitConfig) -> LinearHead:
    """Adam on (ΔW, Δb) relative to the base head's scale, full batch over the certain and sampled items."""
    scale = float(base.weight.norm(dim=1).mean()) or 1.0
    dw = torch.zeros_like(base.weight, requires_grad=True)
    db = torch.zeros_like(base.bias, requires_grad=True)
    opt = torch.optim.Adam([dw, db], lr=cfg.lr)
    fc, yc = feats[certain], targets[certain]
    fu, mu = feats[informative], mask[informative]
    for _ in range(cfg.steps):
        opt.zero_grad(set_to_none=True)
        w = base.weight + scale * dw
        b = base.bias + scale * db
        loss = cfg.anchor * (dw.square().sum() + db.square().sum())
        if fc.shape[0]:
            loss = loss + cfg.certain_weight * F.cross_entropy(fc @ w.T + b, yc)
        if fu.shape[0]:
            z = fu @ w.T + b
            loss = loss - (torch.logsumexp(z.masked_fill(~mu, float("-inf")), 1) - torch.logsumexp(z, 1)).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return LinearHead((base.weight + scale * dw).detach().clone(), (base.bias + scale * db).detach().clone())


def relabel(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0):
    """(labels, confidence, margin, probs) of every item over its own candidates at ``temperature``: probs (N, K) is
    zero outside the candidates; margin = top probability - the next (0 for a single candidate... 1 - 0 = 1)."""
    z = (logits / temperature).masked_fill(~mask.bool(), float("-inf"))
    p = torch.softmax(z, dim=1)
    top = p.topk(min(2, p.shape[1]), dim=1)
    second = top.values[:, 1] if top.values.shape[1] > 1 else torch.zeros(p.shape[0])
    return top.indices[:, 0], top.values[:, 0], top.values[:, 0] - second, p
