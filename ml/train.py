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

METHODS = ("prompt_alignment", "coop", "zero_shot", "linear_probe", "aligned_head")
CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    method: str = "prompt_alignment"  # "prompt_alignment" | "coop" | "zero_shot" | "linear_probe" | "aligned_head"
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
    mix: str = "none"  # alignment teacher: "none" (code, a=0) | "constant" | "ramp" | "trust" (a = 1 - prior trust)
    mix_alpha: float = 0.5  # a for "constant"; final a for "ramp"
    prior_strength: float = 0.0  # aligned head: residual weight decay = prior_strength / N (0: weight_decay as is)
    graph_k: int = 10  # neighbours per item in the training items' feature graph (graph_weight > 0)
    graph_weight: float = 0.0  # RC confidences propagated over the feature graph with this weight (0: no graph)
    seed: int = 1  # seeds context init, item order and view sampling
    precision: str = "fp32"  # "fp32" | "amp" (CUDA only; on CPU training runs in fp32)


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    epochs: int
    loss: float  # the optimised loss, L_PLL + L_align · sg(L_PLL / L_align): its scale follows L_PLL's
    train_acc: float | None  # disambiguation accuracy on training items when true labels are given
    val_acc: float | None  # accuracy on the validation features when given (over their candidates when given)
    seconds: float
    pll_loss: float | None = None  # mean PLL loss of the epoch's steps
    align_loss: float | None = None  # mean unweighted alignment loss L_align (prompt alignment; else None)
    label_churn: float | None = None  # share of training items whose label changed since the last epoch


@dataclass
class TrainResult:
    labels: torch.Tensor  # (N,) long: argmax over each item's own candidates
    confidence: torch.Tensor  # (N,) probability of that label, renormalised over the candidates
    margin: torch.Tensor  # (N,) confidence minus the runner-up candidate's (1.0 for one candidate)
    class_features: torch.Tensor  # (K, D) L2-normalised class text features to deploy (linear probe: folded head)
    logit_scale: float
    history: list[EpochMetrics]
    class_bias: torch.Tensor | None = None  # (K,) logit bias; linear probe and aligned head (pass it to export)
    method: str = "prompt_alignment"  # the method that produced this result
    prior: dict | None = None  # what the data says of the handcrafted prior (ml.prior: hit, chance, trust, T)


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
    if cfg.prior_strength < 0:
        raise ValueError(f"prior_strength must be >= 0, got {cfg.prior_strength}")
    if not 0.0 <= cfg.graph_weight < 1.0:
        raise ValueError(f"graph_weight must be in [0, 1), got {cfg.graph_weight}")
    if cfg.graph_k < 1:
        raise ValueError(f"graph_k must be >= 1, got {cfg.graph_k}")
    if cfg.graph_weight > 0 and cfg.loss.lower() not in ("rc", "proden"):
        raise ValueError(f"graph_weight: the feature graph propagates RC's confidences; loss {cfg.loss!r} has none")


# --- inference ---------------------------------------------------------------------------------------------------


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


@torch.no_grad()
def class_logits(
    features: torch.Tensor, class_features: torch.Tensor, logit_scale: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, K) logits s · normalise(f) C^T + b of a deployable classifier."""
    f = F.normalize(features.float(), dim=-1)
    logits = logit_scale * f @ class_features.to(f.device).float().T
    return logits + bias.to(f.device) if bias is not None else logits


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
        elif cfg.method == "aligned_head":  # the head itself is built by set_prior, from the calibrated prior
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
        return self.method in ("linear_probe", "aligned_head")

    def set_prior(self, prior_rows: torch.Tensor, prior_bias: torch.Tensor, device: torch.device) -> None:
        """Aligned head: build the head from the calibrated handcrafted classifier (ml/aligned_head.py)."""
        from ml.aligned_head import AlignedHead

        self.probe = AlignedHead(prior_rows, prior_bias).to(device)

    def learner(self) -> nn.Module:
        return self.probe if self.has_head else self.prompt_learner

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

    @torch.no_grad()
    def deployable(self) -> tuple[torch.Tensor, float, torch.Tensor | None]:
        """(class matrix, logit scale, bias) such that logits = scale · normalise(f) C^T + bias."""
        if self.has_head:
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
    batch.pll_loss = loss.detach()
    if method in ("prompt_alignment", "aligned_head"):
        if method == "aligned_head":  # the head's own calibrated prior (ml/aligned_head.py)
            hand_logits = model.probe.prior_logits(batch.features[0])
        else:
            assert hand is not None, "prompt alignment needs the handcrafted class features"
            hand_logits = model.logit_scale * batch.features[0] @ hand.T  # z̃ on the PLL loss's view
        q = teacher(hand_logits, batch.mask, batch.logits[0], alpha)
        al = align_loss(batch.logits[0], q)
        batch.align_loss = al.detach()
        loss = combine(loss, al)
    return loss


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _epoch_plan(
    seed: int, epoch: int, n: int, n_views_total: int, n_views: int, batch_size: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Batches of item indices and the (N, n_views) cached views each item is seen through in epoch `epoch`.

    The view plan: every item, every epoch, draws a fresh random order of ALL its V cached views (view 0 = the
    clean eval view, 1..V-1 = augmented) and the loss gets the first `n_views` of it. So a one-view loss sees the
    clean view about 1/V of the time and an augmented one otherwise, and a multi-view loss (PiCO's weak/strong,
    PLCR's three) always gets `n_views` DISTINCT views. `fit` refuses 1 < V < n_views (no distinct views to give);
    with V = 1 every view is the clean one (no augmentation at all; the losses document what that means).
    """
    gen = _epoch_generator(seed, epoch)
    perm = torch.randperm(n, generator=gen)
    if n_views_total == 1:
        view_idx = torch.zeros(n, n_views, dtype=torch.long)
    else:
        view_idx = torch.rand(n, n_views_total, generator=gen).argsort(dim=1)[:, :n_views]
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:  # no singleton batch (BatchNorm, SupCon)
        last = batches.pop()  # popped first: `batches[-2] = cat([batches[-2], batches.pop()])` hit the wrong batch
        batches[-1] = torch.cat([batches[-1], last])
    return batches, view_idx


def views_needed(config: TrainConfig) -> int:
    """Cached views a run of `config` needs so that its loss gets distinct views (1 for zero-shot)."""
    from ml.losses import LOSSES

    if config.method == "zero_shot":
        return 1
    return LOSSES[config.loss.lower()].n_views


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
    val: tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_path: str | Path | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train on cached features (V, N, D) with (N, K) candidate masks; see module doc.

    checkpoint_path: saved atomically at every epoch end; if it exists at start, training resumes from it and ends
    exactly where an uninterrupted run would. should_cancel() is checked between steps -> TrainingCancelled.
    val: (features, labels) or (features, labels, (M, K) candidate mask): val_acc is over the candidates when given.
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
    val_feats = val_labels = val_mask = None
    if val is not None:
        vf, val_labels = val[0], val[1]
        val_mask = val[2].bool() if len(val) > 2 and val[2] is not None else None
        val_feats = F.normalize((vf[0] if vf.dim() == 3 else vf).float(), dim=-1).to(device)

    model = Classifier(backbone, classnames, config, device)
    hand = prior = None
    if config.method in ("prompt_alignment", "zero_shot", "aligned_head"):
        hand = handcrafted_class_features(  # t̃: once per run, no grad
            model.text_encoder, backbone.tokenizer, classnames, config.templates, device
        )  # [K, D]
        prior = _read_prior(model, hand, feats[0], mask, calibrate=config.method == "aligned_head", device=device)

    def result(class_feats: torch.Tensor, scale: float, bias: torch.Tensor | None, history: list) -> TrainResult:
        labels, conf, margin = disambiguate(feats[0], class_feats, scale, mask, bias)
        return TrainResult(labels, conf, margin, class_feats.cpu(), scale, history, bias, config.method, prior)

    if config.method == "zero_shot":
        return result(hand, model.logit_scale, None, [])
    if config.mix == "trust" and prior is None:
        raise ValueError(f"mix 'trust': method {config.method!r} has no handcrafted prior to trust")

    loss_fn = build_loss(config.loss, mask, epochs=config.epochs, feature_dim=d, seed=config.seed).to(device)
    if 1 < v_total < loss_fn.n_views:
        raise ValueError(
            f"loss {config.loss}: needs {loss_fn.n_views} distinct feature views per item, got {v_total} "
            f"(encode at least {loss_fn.n_views}, see views_needed)"
        )
    params = [p for p in model.learner().parameters() if p.requires_grad] + loss_fn.trainable_parameters()
    # aligned head: the residual's decay is prior_strength / n (MAP: a fixed Gaussian prior on it against n items'
    # mean loss), applied as a proximal step after each update (stable at any strength, unlike lr * decay > 2 in SGD)
    prox = config.prior_strength / n if config.method == "aligned_head" and config.prior_strength > 0 else 0.0
    decay = 0.0 if prox else config.weight_decay
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    # fp16 autocast needs loss scaling (small gradients underflow in fp16); disabled, the scaler is a pass-through
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    meta = _Meta((v_total, n, d, k), list(classnames), asdict(config))
    history: list[EpochMetrics] = []
    start_epoch = 0
    prev_labels: torch.Tensor | None = None  # the training items' labels at the end of the previous epoch

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
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"])
        history = [EpochMetrics(**h) for h in state["history"]]
        prev_labels = state.get("labels")
    if config.graph_weight > 0:  # transductive: RC's confidences propagate over the training items' feature graph
        _attach_graph(model, loss_fn, feats[0], mask_f, config, init=start_epoch == 0, prior=prior)

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        loss_fn.set_epoch(epoch)
        alpha = mix_alpha(config.mix, config.mix_alpha, epoch, config.epochs, prior and prior["trust"])
        batches, view_idx = _epoch_plan(config.seed, epoch, n, v_total, loss_fn.n_views, config.batch_size)
        view_idx = view_idx.to(device)
        model.learner().train()
        total, count = 0.0, 0
        pll_total, align_total = 0.0, None
        for b in batches:
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(f"cancelled in epoch {epoch + 1}")
            idx = b.to(device)
            f_views = [feats[view_idx[idx, j], idx] for j in range(loss_fn.n_views)]  # each [B, D]
            batch = PLLBatch(logits=[], mask=mask_f[idx], index=idx, features=f_views)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                loss = step_loss(model, loss_fn, batch, config.method, hand, alpha)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when the scaled gradients overflowed (then the scale shrinks)
            scaler.update()
            if prox:  # argmin_w ||w - w'||² / (2 lr) + prox ||w||² / 2
                with torch.no_grad():
                    model.probe.fc.weight.div_(1.0 + optimizer.param_groups[0]["lr"] * prox)
            if loss_fn.needs_after_step:  # fresh forward of the same batch after the step (RC, LWS); its text
                with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):  # pass, with grad,
                    z = model.logits([f_views[0]], update_stats=False)[0]  # is reused by the next step
                loss_fn.after_step(z.detach().float(), batch)
            total += float(loss.detach()) * len(b)
            pll_total += float(batch.pll_loss) * len(b)
            if batch.align_loss is not None:
                align_total = (align_total or 0.0) + float(batch.align_loss) * len(b)
            count += len(b)
        scheduler.step()

        model.learner().eval()
        class_feats, scale, bias = model.deployable()
        train_acc = val_acc = churn = None
        labels, _, _ = disambiguate(feats[0], class_feats, scale, mask, bias)
        if prev_labels is not None:
            churn = float((labels != prev_labels.cpu()).float().mean())
        prev_labels = labels
        if true_labels is not None:
            train_acc = float((labels == true_labels.cpu()).float().mean())
        if val_feats is not None:
            vl, _, _ = disambiguate(val_feats, class_feats, scale, val_mask, bias)
            val_acc = float((vl == val_labels.cpu()).float().mean())
        metrics = EpochMetrics(
            epoch=epoch + 1,
            epochs=config.epochs,
            loss=total / max(count, 1),
            train_acc=train_acc,
            val_acc=val_acc,
            seconds=time.perf_counter() - t0,
            pll_loss=pll_total / max(count, 1),
            align_loss=None if align_total is None else align_total / max(count, 1),
            label_churn=churn,
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
                    "scaler": scaler.state_dict(),
                    "history": [asdict(h) for h in history],
                    "labels": labels,  # for the next epoch's label churn
                },
            )
        if on_epoch is not None:
            on_epoch(metrics)

    model.learner().eval()
    class_feats, scale, bias = model.deployable()
    return result(class_feats, scale, bias, history)


def _read_prior(model: Classifier, hand, feats0, mask, *, calibrate: bool, device) -> dict:
    """What the training items' candidate sets say of the handcrafted prior (ml.prior); for the aligned head also
    its calibration (T, class bias) and the head built from it."""
    from ml.prior import calibrate_prior, prior_evidence, prior_trust

    with torch.no_grad():
        hand_logits = model.logit_scale * feats0 @ hand.T  # [N, K]
    prior = prior_trust(hand_logits.cpu(), mask)
    t, bias = calibrate_prior(hand_logits, mask)
    prior.update(temperature=t, **prior_evidence(hand_logits, mask, t, bias))
    prior["trust"] = prior["estimate"] * prior["shrink"]  # what the candidate sets support of the prior
    if calibrate:  # the head's anchor: the calibrated prior, shrunk as far as the candidate sets fail to support it
        g = prior["shrink"]
        model.set_prior(g * (model.logit_scale / t) * hand, g * bias.to(device), device)
    return prior


@torch.no_grad()
def _attach_graph(model: Classifier, loss_fn, feats0, mask_f, config: TrainConfig, *, init: bool, prior=None) -> None:
    """The training items' kNN graph for RC's confidence updates; on a fresh run the confidences start as the
    propagated prior (aligned head) or the propagated uniform sets (ml.prior.propagate)."""
    from ml.prior import graph_purity, knn_graph, propagate

    neighbours = knn_graph(feats0, config.graph_k)
    loss_fn.set_graph(neighbours, config.graph_weight)
    if prior is not None:
        prior["graph_purity"] = graph_purity(mask_f.cpu(), neighbours.cpu())
    if init:
        start = F.softmax(model.probe.prior_logits(feats0), dim=1) if config.method == "aligned_head" else mask_f
        loss_fn.confidence.copy_(propagate(start, mask_f, neighbours, config.graph_weight))
