"""The training methods, registered as the losses are (``ml.losses.LOSSES``): what each one trains and what it
reads of the handcrafted prompt, and :class:`Classifier`, the one learner object whatever the method.

    method            learner        handcrafted prior   alignment term   trains
    prompt_alignment  prompt (CoOp)  yes                 yes              yes
    coop              prompt (CoOp)  no                  no               yes
    zero_shot         prompt (CoOp)  yes                 no               no: the handcrafted classifier as is
    linear_probe      linear probe   no                  no               yes
    aligned_head      aligned head   yes (calibrated)    yes              yes

``ml.train.fit`` asks the method, never its name: a new method is one more entry here.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ml import prompt_learner
from ml.align import align_loss, combine, teacher
from ml.aligned_head import AlignedHead
from ml.linear_probe import LinearProbe
from ml.prompt_learner import PromptLearner, PromptLearnerConfig
from ml.text_encoder import TextEncoder


@dataclass(frozen=True)
class Method:
    name: str
    learner: str  # "prompt" (CoOp's context) | "linear_probe" | "aligned_head" (built from the calibrated prior)
    handcrafted: bool  # reads the handcrafted prompt's class features t̃ and what the data says of them (ml.prior)
    aligns: bool  # adds the alignment term toward a handcrafted teacher (ml.align)
    trains: bool = True  # False: the handcrafted classifier as is, no epoch

    @property
    def has_head(self) -> bool:
        """A linear head on the image features (deployed folded), not a prompt context."""
        return self.learner != "prompt"

    @property
    def anchored(self) -> bool:
        """The head starts as, and is held near, the calibrated handcrafted classifier (ml/aligned_head.py)."""
        return self.learner == "aligned_head"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("prompt_alignment", "prompt", handcrafted=True, aligns=True),
        Method("coop", "prompt", handcrafted=False, aligns=False),
        Method("zero_shot", "prompt", handcrafted=True, aligns=False, trains=False),
        Method("linear_probe", "linear_probe", handcrafted=False, aligns=False),
        Method("aligned_head", "aligned_head", handcrafted=True, aligns=True),
    )
}


def method(name: str) -> Method:
    """The registered method ``name``; ValueError naming the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"method: unknown {name!r}; expected one of {tuple(METHODS)}")
    return METHODS[name]


class Classifier(nn.Module):
    """Maps normalised image features to logits; owns the only trainable weights (ctx or the linear head)."""

    def __init__(self, backbone, classnames: Sequence[str], cfg, device: torch.device):
        super().__init__()
        self.method = cfg.method
        self.kind = method(cfg.method)
        self.logit_scale = float(backbone.model.logit_scale.exp().item())  # s, not trained
        if self.kind.learner == "linear_probe":
            self.probe = LinearProbe(backbone.embed_dim, len(classnames), seed=cfg.seed).to(device)
        elif self.kind.anchored:  # the head itself is built by set_prior, from the calibrated prior
            self.text_encoder = TextEncoder(backbone.model)
        else:
            self.text_encoder = TextEncoder(backbone.model)
            pl_cfg = PromptLearnerConfig(
                n_ctx=cfg.n_ctx,
                ctx_init=cfg.ctx_init,
                class_token_position=cfg.class_token_position,
                csc=cfg.csc,
                seed=cfg.seed,
            )
            self.prompt_learner = PromptLearner(pl_cfg, classnames, self.text_encoder, backbone.tokenizer, device)

    @property
    def has_head(self) -> bool:
        return self.kind.has_head

    def set_prior(self, prior_rows: torch.Tensor, prior_bias: torch.Tensor, device: torch.device) -> None:
        """Aligned head: build the head from the calibrated handcrafted classifier (ml/aligned_head.py)."""
        self.probe = AlignedHead(prior_rows, prior_bias).to(device)

    def learner(self) -> nn.Module:
        return self.probe if self.has_head else self.prompt_learner

    def class_features(self) -> torch.Tensor:
        """(K, D) normalised learned class text features (prompt methods): one text pass.

        Reused while the context is unchanged (same `ctx._version`, autocast state; a pass with grad also serves
        no-grad callers, detached): RC/LWS's after-step forward and the next step's forward see the same context.
        A pass with grad is reused by at most one backward: the backward frees its graph, so a hook drops it from
        the cache as soon as a gradient flows through it. Without that, a step the GradScaler skips (amp, scaled
        gradients overflowed) leaves `ctx` and its version untouched and the next step would backward through the
        freed graph ("Trying to backward through the graph a second time").
        """
        key = (self.prompt_learner.ctx._version, torch.is_autocast_enabled())
        cached = getattr(self, "_text_cache", None)
        if cached is not None and cached[0] == key and (cached[1].requires_grad or not torch.is_grad_enabled()):
            return cached[1] if torch.is_grad_enabled() else cached[1].detach()
        t = prompt_learner.class_text_features(self.prompt_learner, self.text_encoder)  # by module: patchable
        self._text_cache = (key, t)
        if t.requires_grad:
            t.register_hook(self._forget_text(t))
        return t

    def _forget_text(self, t: torch.Tensor):
        """A gradient hook on `t`: drops `t` from the cache when a backward reaches it (the hook keeps no strong
        reference to `t`, so a tensor nobody uses is freed with its graph)."""
        ref = weakref.ref(t)

        def hook(grad: torch.Tensor) -> None:
            cached = getattr(self, "_text_cache", None)
            if cached is not None and cached[1] is ref():
                self._text_cache = None

        return hook

    def logits(self, feats: list[torch.Tensor], update_stats: bool = True) -> list[torch.Tensor]:
        """Per-view (B, K) logits; one text pass shared by all views.

        Linear probe: the BatchNorm's running statistics are updated once per step, by the first view of the
        step's forward (`update_stats`); the other views and the after-step forward normalise with their batch
        statistics without touching the running ones.
        """
        if self.has_head:
            return [self.probe(f, update_stats=update_stats and j == 0) for j, f in enumerate(feats)]
        t = self.class_features()  # [K, D]
        return [self.logit_scale * f @ t.T for f in feats]

    def teacher_logits(self, feats0: torch.Tensor, hand: torch.Tensor | None) -> torch.Tensor:
        """z̃ on the PLL loss's view: the anchored head's own calibrated prior, else s f t̃^T."""
        if self.kind.anchored:
            return self.probe.prior_logits(feats0)
        assert hand is not None, "prompt alignment needs the handcrafted class features"
        return self.logit_scale * feats0 @ hand.T

    @torch.no_grad()
    def deployable(self) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """(class matrix, logit scale, bias) such that logits = scale · normalise(f) C^T + bias."""
        if self.has_head:
            a, b = self.probe.folded()
            return a.cpu(), 1.0, b.cpu()
        return self.class_features().cpu(), self.logit_scale, None


def step_loss(
    model: Classifier,
    loss_fn,
    batch,
    method_name: str,
    hand: torch.Tensor | None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Loss of one mini-batch; fills `batch.logits`. A method that aligns adds the teacher term (ml.align):

    L = L_PLL(z) + L_align(z, q) · sg(L_PLL) / sg(L_align),  q = teacher(z̃ on view 0, Y, z, alpha)
    """
    batch.logits = [z.float() for z in model.logits(batch.features)]
    loss = loss_fn(batch)
    batch.pll_loss = loss.detach()
    if method(method_name).aligns:
        q = teacher(model.teacher_logits(batch.features[0], hand), batch.mask, batch.logits[0], alpha)
        al = align_loss(batch.logits[0], q)
        batch.align_loss = al.detach()
        loss = combine(loss, al)
    return loss
