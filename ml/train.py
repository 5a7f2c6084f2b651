"""One training run on cached image features: prompt alignment, CoOp + PLL, linear probe + PLL, zero-shot.

(Over 400 lines on purpose: the config, its checks, the trainer, the epoch plan and the checkpoint format are one
unit; a resumed run must replay exactly, and splitting them would spread that one invariant over several files.)

    features (V, N, D) from ml.features.encode_images  ->  fit()  ->  TrainResult (labels, class features, ...)

Only the prompt context (or the linear head, or PiCO's projection head) is trained; the image encoder never runs
here and the text tower sees only the K prompt embeddings per step (truncated, see ml.text_encoder).
Determinism: no global RNG is used in the loop. The item order and the cached view of each item in epoch e come
from a generator seeded with (seed, e), so a run resumed from an epoch-end checkpoint replays exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ml.errors import TrainingCancelled
from ml.files import atomic_path

METHODS = ("prompt_alignment", "coop", "zero_shot", "linear_probe")
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    method: str = "prompt_alignment"  # "prompt_alignment" | "coop" | "zero_shot" | "linear_probe"
    loss: str = "rc"  # "naive" | "cc" | "rc" | "lws" | "cavl" | "plcr" | "pico"
    epochs: int = 50  # passes over the training items (cosine LR over this many epochs)
    batch_size: int = 32  # items per SGD step
    lr: float = 0.002  # SGD learning rate (CoOp default; the linear probe wants a larger one, method.md 2.4)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # SGD weight decay
    n_ctx: int = 16  # learnable context tokens
    ctx_init: str = ""  # "" -> N(0, 0.02^2); else an init phrase ("a photo of a")
    class_token_position: str = "end"  # "end" | "middle" | "front"
    csc: bool = False  # class-specific context
    templates: tuple[str, ...] = ("a photo of a {}.",)  # handcrafted prompt(s); >1 = ensemble
    mix: str = "none"  # alignment teacher: "none" (code, a=0) | "constant" | "ramp"
    mix_alpha: float = 0.5  # a for "constant"; final a for "ramp"
    seed: int = 1  # seeds context init, item order and view sampling
    precision: str = "fp32"  # "fp32" | "amp" (CUDA only; on CPU training runs in fp32)


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    epochs: int
    loss: float
    train_acc: float | None  # disambiguation accuracy on training items when true labels are given
    val_acc: float | None  # accuracy on the validation features when given
    seconds: float


@dataclass
class TrainResult:
    labels: torch.Tensor  # (N,) long: argmax over each item's own candidates
    confidence: torch.Tensor  # (N,) probability of that label, renormalised over the candidates
    margin: torch.Tensor  # (N,) confidence minus the runner-up candidate's (1.0 for one candidate)
    class_features: torch.Tensor  # (K, D) L2-normalised class text features to deploy (linear probe: folded head)
    logit_scale: float
    history: list[EpochMetrics]
    class_bias: torch.Tensor | None = None  # (K,) logit bias; only the linear probe has one (pass it to export)
    method: str = "prompt_alignment"  # the method that produced this result


# --- input validation --------------------------------------------------------------------------------------------


def _check_classnames(classnames: Sequence[str]) -> None:
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
    _check_classnames(classnames)
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


def _check_mask(candidates: torch.Tensor, classnames: Sequence[str], n: int) -> torch.Tensor:
    _check_classnames(classnames)
    if not isinstance(candidates, torch.Tensor) or candidates.dim() != 2:
        raise ValueError("candidates: expected an (N, K) bool tensor (use candidates_to_mask for name lists)")
    if candidates.shape != (n, len(classnames)):
        raise ValueError(f"candidates: shape {tuple(candidates.shape)} != (N={n}, K={len(classnames)})")
    mask = candidates.bool().cpu()
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"item {int(empty[0])}: empty candidate set")
    return mask


def _check_config(cfg: TrainConfig) -> None:
    from ml.align import MIX_MODES
    from ml.losses import LOSSES

    if cfg.method not in METHODS:
        raise ValueError(f"method: unknown {cfg.method!r}; expected one of {METHODS}")
    if cfg.loss.lower() not in LOSSES:
        raise ValueError(f"loss: unknown {cfg.loss!r}; expected one of {sorted(LOSSES)}")
    if cfg.mix not in MIX_MODES:
        raise ValueError(f"mix: unknown {cfg.mix!r}; expected one of {MIX_MODES}")
    if cfg.class_token_position not in ("end", "middle", "front"):
        raise ValueError(f"class_token_position: unknown {cfg.class_token_position!r}")
    if cfg.precision not in ("fp32", "amp"):
        raise ValueError(f"precision: unknown {cfg.precision!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    if not 0.0 <= cfg.mix_alpha <= 1.0:
        raise ValueError(f"mix_alpha must be in [0, 1], got {cfg.mix_alpha}")


# --- inference ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def candidate_probabilities(
    features: torch.Tensor,
    class_features: torch.Tensor,
    logit_scale: float,
    candidates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, K) class probabilities p = softmax(s · normalise(f) C^T + b), renormalised over the candidates."""
    f = F.normalize(features.float(), dim=-1)
    c = class_features.to(f.device).float()
    logits = logit_scale * f @ c.T  # [N, K]
    if bias is not None:
        logits = logits + bias.to(f.device)
    p = F.softmax(logits, dim=1)
    if candidates is not None:
        m = candidates.to(f.device).bool()
        p = p * m
        p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-30)
    return p


def disambiguate(
    features: torch.Tensor,
    class_features: torch.Tensor,
    logit_scale: float,
    candidates: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(labels, confidence, margin) for (N, D) image features, restricted to candidates when given.

    p = softmax(s · normalise(f) C^T + b), renormalised over the candidates; label = argmax; margin = p1 - p2.
    """
    p = candidate_probabilities(features, class_features, logit_scale, candidates=candidates, bias=bias)
    top = p.topk(2, dim=1)
    return top.indices[:, 0].cpu(), top.values[:, 0].cpu(), (top.values[:, 0] - top.values[:, 1]).cpu()


# --- the learner: one object whatever the method ----------------------------------------------------------------


class Classifier(nn.Module):
    """Maps normalised image features to logits; owns the only trainable weights (ctx or the linear head)."""

    def __init__(self, backbone, classnames: Sequence[str], cfg: TrainConfig, device: torch.device):
        super().__init__()
        from ml.linear_probe import LinearProbe
        from ml.prompt_learner import PromptLearner, PromptLearnerConfig
        from ml.text_encoder import TextEncoder

        self.method = cfg.method
        self.logit_scale = float(backbone.model.logit_scale.exp().item())  # s, not trained
        if cfg.method == "linear_probe":
            self.probe = LinearProbe(backbone.embed_dim, len(classnames), seed=cfg.seed).to(device)
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

    def learner(self) -> nn.Module:
        return self.probe if self.method == "linear_probe" else self.prompt_learner

    def class_features(self) -> torch.Tensor:
        """(K, D) normalised learned class text features (prompt methods): one text pass.

        Reused while the context is unchanged (same `ctx._version`, autocast state; a pass with grad also serves
        no-grad callers, detached): RC/LWS's after-step forward and the next step's forward see the same context.
        """
        from ml.prompt_learner import class_text_features

        key = (self.prompt_learner.ctx._version, torch.is_autocast_enabled())
        cached = getattr(self, "_text_cache", None)
        if cached is not None and cached[0] == key and (cached[1].requires_grad or not torch.is_grad_enabled()):
            return cached[1] if torch.is_grad_enabled() else cached[1].detach()
        t = class_text_features(self.prompt_learner, self.text_encoder)
        self._text_cache = (key, t)
        return t

    def logits(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-view (B, K) logits; one text pass shared by all views."""
        if self.method == "linear_probe":
            return [self.probe(f) for f in feats]
        t = self.class_features()  # [K, D]
        return [self.logit_scale * f @ t.T for f in feats]

    @torch.no_grad()
    def deployable(self) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """(class matrix, logit scale, bias) such that logits = scale · normalise(f) C^T + bias."""
        if self.method == "linear_probe":
            a, b = self.probe.folded()
            return a.cpu(), 1.0, b.cpu()
        return self.class_features().cpu(), self.logit_scale, None


# --- training ----------------------------------------------------------------------------------------------------


def step_loss(
    model: Classifier,
    loss_fn,
    batch,
    method: str,
    hand: torch.Tensor | None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """Loss of one mini-batch; fills `batch.logits`. Prompt alignment adds the teacher term (ml.align):

    L = L_PLL(z) + L_align(z, q) · sg(L_PLL) / sg(L_align),  q = teacher(z̃ = s f t̃^T on view 0, Y, z, alpha)
    """
    from ml.align import align_loss, combine, teacher

    batch.logits = [z.float() for z in model.logits(batch.features)]
    loss = loss_fn(batch)
    if method == "prompt_alignment":
        assert hand is not None, "prompt alignment needs the handcrafted class features"
        hand_logits = model.logit_scale * batch.features[0] @ hand.T  # z̃ on the PLL loss's view
        q = teacher(hand_logits, batch.mask, batch.logits[0], alpha)
        loss = combine(loss, align_loss(batch.logits[0], q))
    return loss


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _epoch_plan(
    seed: int, epoch: int, n: int, n_views_total: int, n_views: int, batch_size: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Batches of item indices and the (N, n_views) cached view of each item for epoch `epoch`."""
    gen = _epoch_generator(seed, epoch)
    perm = torch.randperm(n, generator=gen)
    if n_views_total == 1:
        view_idx = torch.zeros(n, n_views, dtype=torch.long)
    elif n_views_total - 1 >= n_views:  # distinct augmented views per item
        view_idx = torch.rand(n, n_views_total - 1, generator=gen).argsort(dim=1)[:, :n_views] + 1
    else:
        view_idx = torch.randint(1, n_views_total, (n, n_views), generator=gen)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:  # no singleton batch (BatchNorm, SupCon)
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches, view_idx


def _save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:  # a crash never leaves a torn checkpoint
        torch.save(payload, tmp)


@dataclass
class _Meta:
    shape: tuple[int, int, int, int]  # (V, N, D, K)
    classnames: list[str]
    config: dict = field(default_factory=dict)


def fit(
    backbone,
    features: torch.Tensor,
    candidates: torch.Tensor,
    classnames: Sequence[str],
    config: TrainConfig,
    *,
    true_labels: torch.Tensor | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_path: str | Path | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train on cached features (V, N, D) with (N, K) candidate masks; see module doc.

    checkpoint_path: saved atomically at every epoch end; if it exists at start, training resumes from it and ends
    exactly where an uninterrupted run would. should_cancel() is checked between steps -> TrainingCancelled.
    """
    from ml.align import mix_alpha
    from ml.losses import PLLBatch, build_loss
    from ml.prompts import handcrafted_class_features

    _check_config(config)
    if features.dim() == 2:
        features = features.unsqueeze(0)  # [1, N, D]
    assert features.dim() == 3, f"features must be (V, N, D), got {tuple(features.shape)}"
    v_total, n, d = features.shape
    if n == 0:
        raise ValueError("no training items")
    if d != backbone.embed_dim:
        raise ValueError(f"features have dimension {d}, backbone {backbone.id} produces {backbone.embed_dim}")
    mask = _check_mask(candidates, classnames, n)
    k = len(classnames)
    if true_labels is not None and true_labels.shape != (n,):
        raise ValueError(f"true_labels: shape {tuple(true_labels.shape)} != ({n},)")
    device = torch.device(device) if device is not None else backbone.device
    use_amp = config.precision == "amp" and device.type == "cuda"

    feats = F.normalize(features.float(), dim=-1).to(device)  # [V, N, D], method.md 6.3
    mask_f = mask.float().to(device)  # [N, K]
    val_feats = val_labels = None
    if val is not None:
        vf, val_labels = val
        val_feats = F.normalize((vf[0] if vf.dim() == 3 else vf).float(), dim=-1).to(device)

    model = Classifier(backbone, classnames, config, device)
    hand = None
    if config.method in ("prompt_alignment", "zero_shot"):
        hand = handcrafted_class_features(  # t̃: once per run, no grad
            model.text_encoder, backbone.tokenizer, classnames, config.templates, device
        )  # [K, D]

    def result(class_feats: torch.Tensor, scale: float, bias: torch.Tensor | None, history: list) -> TrainResult:
        labels, conf, margin = disambiguate(feats[0], class_feats, scale, mask, bias)
        return TrainResult(labels, conf, margin, class_feats.cpu(), scale, history, bias, config.method)

    if config.method == "zero_shot":
        return result(hand, model.logit_scale, None, [])

    loss_fn = build_loss(config.loss, mask, epochs=config.epochs, feature_dim=d).to(device)
    params = [p for p in model.learner().parameters() if p.requires_grad] + loss_fn.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    meta = _Meta((v_total, n, d, k), list(classnames), asdict(config))
    history: list[EpochMetrics] = []
    start_epoch = 0

    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        saved = state.get("meta", {})
        if state.get("version") != CHECKPOINT_VERSION or saved != asdict(meta):
            raise ValueError(f"checkpoint {ckpt} was written for different data or config; remove it to start over")
        model.learner().load_state_dict(state["learner"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        history = [EpochMetrics(**h) for h in state["history"]]

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        loss_fn.set_epoch(epoch)
        alpha = mix_alpha(config.mix, config.mix_alpha, epoch, config.epochs)
        batches, view_idx = _epoch_plan(config.seed, epoch, n, v_total, loss_fn.n_views, config.batch_size)
        view_idx = view_idx.to(device)
        model.learner().train()
        total, count = 0.0, 0
        for b in batches:
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(f"cancelled in epoch {epoch + 1}")
            idx = b.to(device)
            f_views = [feats[view_idx[idx, j], idx] for j in range(loss_fn.n_views)]  # each [B, D]
            batch = PLLBatch(logits=[], mask=mask_f[idx], index=idx, features=f_views)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                loss = step_loss(model, loss_fn, batch, config.method, hand, alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if loss_fn.needs_after_step:  # fresh forward of the same batch after the step (RC, LWS); its text
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):  # pass, with grad,
                    z = model.logits([f_views[0]])[0]  # is reused by the next step (Classifier.class_features)
                loss_fn.after_step(z.detach().float(), batch)
            total += float(loss.detach()) * len(b)
            count += len(b)
        scheduler.step()

        model.learner().eval()
        class_feats, scale, bias = model.deployable()
        train_acc = val_acc = None
        if true_labels is not None:
            labels, _, _ = disambiguate(feats[0], class_feats, scale, mask, bias)
            train_acc = float((labels == true_labels.cpu()).float().mean())
        if val_feats is not None:
            vl, _, _ = disambiguate(val_feats, class_feats, scale, None, bias)
            val_acc = float((vl == val_labels.cpu()).float().mean())
        metrics = EpochMetrics(
            epoch + 1, config.epochs, total / max(count, 1), train_acc, val_acc, time.perf_counter() - t0
        )
        history.append(metrics)
        if ckpt is not None:
            _save_checkpoint(
                ckpt,
                {
                    "version": CHECKPOINT_VERSION,
                    "meta": asdict(meta),
                    "epoch": epoch + 1,  # completed epochs
                    "learner": model.learner().state_dict(),
                    "loss": loss_fn.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": [asdict(h) for h in history],
                },
            )
        if on_epoch is not None:
            on_epoch(metrics)

    model.learner().eval()
    class_feats, scale, bias = model.deployable()
    return result(class_feats, scale, bias, history)
