"""One training run on cached image features: prompt alignment, CoOp + PLL, linear probe + PLL, zero-shot.

    features (V, N, D) from ml.features.encode_images  ->  fit()  ->  TrainResult (labels, class features, ...)

``fit`` is a sequence of named steps: check the data (:func:`_prepare`), build the method's learner
(``ml.methods.Classifier``) and read the handcrafted prior when the method uses one (:func:`_handcrafted_prior`),
build the loss and optimiser, resumed from the epoch checkpoint when there is one (:func:`_trainer`; a checkpoint
written for other data or another config is a :class:`ml.errors.StaleCheckpoint`), then per epoch one
:func:`_epoch` (steps, then metrics), the checkpoint and ``on_epoch``. The config, its checks, the epoch plan and
the checkpoint format stay in this file: a resumed run must replay exactly, and they are that one invariant.

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

from ml.align import MIX_MODES, mix_alpha
from ml.errors import StaleCheckpoint, TrainingCancelled
from ml.files import atomic_path
from ml.inference import candidate_probabilities, candidates_to_mask, check_classnames, class_logits, disambiguate
from ml.losses import LOSSES, PLLBatch, build_loss
from ml.losses.base import candidate_softmax
from ml.methods import METHODS as _REGISTRY
from ml.methods import Classifier, method, step_loss
from ml.prior import calibrate_prior, graph_purity, knn_graph, prior_evidence, prior_trust, propagate
from ml.prompts import handcrafted_class_features

METHODS = tuple(_REGISTRY)  # the method names (ml.methods registers what each one does)
CHECKPOINT_VERSION = 1

# the inference functions and the learner live in ml.inference and ml.methods; these names stay importable here
__all__ = [
    "CHECKPOINT_VERSION",
    "METHODS",
    "Classifier",
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "TrainingCancelled",
    "candidate_probabilities",
    "candidates_to_mask",
    "class_logits",
    "disambiguate",
    "fit",
    "step_loss",
    "views_needed",
]


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


def _check_mask(candidates: torch.Tensor, classnames: Sequence[str], n: int) -> torch.Tensor:
    check_classnames(classnames)
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
    method(cfg.method)  # ValueError naming the known methods
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


# --- the epoch plan ----------------------------------------------------------------------------------------------


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
    """Cached views a run of `config` needs so that its loss gets distinct views (1 for a method that never trains)."""
    if not method(config.method).trains:
        return 1
    return LOSSES[config.loss.lower()].n_views


# --- the checkpoint ----------------------------------------------------------------------------------------------


@dataclass
class _Meta:
    shape: tuple[int, int, int, int]  # (V, N, D, K)
    classnames: list[str]
    config: dict = field(default_factory=dict)


def _save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:  # a crash never leaves a torn checkpoint
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, meta: _Meta, device: torch.device) -> dict:
    """The checkpoint's state; :class:`StaleCheckpoint` when it was written for other data or another config."""
    state = torch.load(path, map_location=device, weights_only=False)
    if state.get("version") != CHECKPOINT_VERSION or state.get("meta", {}) != asdict(meta):
        raise StaleCheckpoint(f"checkpoint {path} was written for different data or config; remove it to start over")
    return state


# --- training: fit and its steps ---------------------------------------------------------------------------------


@dataclass
class _Data:
    """fit's inputs, checked, normalised and on the training device."""

    feats: torch.Tensor  # [V, N, D] L2-normalised (method.md 6.3)
    mask: torch.Tensor  # [N, K] bool, on the CPU
    mask_f: torch.Tensor  # [N, K] float, on the device
    classnames: list[str]
    device: torch.device
    use_amp: bool
    true_labels: torch.Tensor | None = None
    val_feats: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    val_mask: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        v, n, d = self.feats.shape
        return v, n, d, len(self.classnames)


@dataclass
class _Trainer:
    """What an epoch updates: the learner, the loss (with its state), the optimiser, its schedule and scaler, and
    where the run stands (the next epoch, the history so far, the training items' labels after the last epoch)."""

    model: Classifier
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    prox: float  # aligned head: the residual's proximal decay per unit of learning rate (0: none)
    hand: torch.Tensor | None  # t̃ (K, D) of a method that reads the handcrafted prior
    prior: dict | None
    epoch: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    labels: torch.Tensor | None = None  # for the next epoch's label churn

    def state(self) -> dict:
        return {
            "learner": self.model.learner().state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def resume(self, state: dict) -> None:
        self.model.learner().load_state_dict(state["learner"])
        self.loss_fn.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.history = [EpochMetrics(**h) for h in state["history"]]
        self.labels = state.get("labels")


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

    checkpoint_path: saved atomically at every epoch end, before ``on_epoch(metrics)``; if it exists at start,
    training resumes from it and ends exactly where an uninterrupted run would (``StaleCheckpoint``, a ValueError,
    when it was written for other data or config). should_cancel() is checked between steps -> TrainingCancelled.
    val: (features, labels) or (features, labels, (M, K) candidate mask): val_acc is over the candidates when given.
    """
    _check_config(config)
    data = _prepare(backbone, features, candidates, classnames, config, true_labels, val, device)
    model = Classifier(backbone, classnames, config, data.device)
    hand, prior = _handcrafted_prior(model, backbone, config, data)

    def result(class_feats: torch.Tensor, scale: float, bias: torch.Tensor | None, history: list) -> TrainResult:
        labels, conf, margin = disambiguate(data.feats[0], class_feats, scale, data.mask, bias)
        return TrainResult(labels, conf, margin, class_feats.cpu(), scale, history, bias, config.method, prior)

    if not method(config.method).trains:
        return result(hand, model.logit_scale, None, [])
    if config.mix == "trust" and prior is None:
        raise ValueError(f"mix 'trust': method {config.method!r} has no handcrafted prior to trust")
    meta = _Meta(data.shape, list(classnames), asdict(config))
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    trainer = _trainer(model, config, data, hand, prior, ckpt, meta)

    for epoch in range(trainer.epoch, config.epochs):
        metrics = _epoch(trainer, data, config, epoch, should_cancel)
        if ckpt is not None:
            payload = {"version": CHECKPOINT_VERSION, "meta": asdict(meta), "epoch": epoch + 1, **trainer.state()}
            payload.update(history=[asdict(h) for h in trainer.history], labels=trainer.labels)
            _save_checkpoint(ckpt, payload)
        if on_epoch is not None:
            on_epoch(metrics)

    model.learner().eval()
    class_feats, scale, bias = model.deployable()
    return result(class_feats, scale, bias, trainer.history)


def _prepare(backbone, features, candidates, classnames, config: TrainConfig, true_labels, val, device) -> _Data:
    """Check fit's inputs (ValueError naming the problem) and put them, normalised, on the training device."""
    if features.dim() == 2:
        features = features.unsqueeze(0)  # [1, N, D]
    assert features.dim() == 3, f"features must be (V, N, D), got {tuple(features.shape)}"
    _, n, d = features.shape
    if n == 0:
        raise ValueError("no training items")
    if d != backbone.embed_dim:
        raise ValueError(f"features have dimension {d}, backbone {backbone.id} produces {backbone.embed_dim}")
    mask = _check_mask(candidates, classnames, n)
    if true_labels is not None and true_labels.shape != (n,):
        raise ValueError(f"true_labels: shape {tuple(true_labels.shape)} != ({n},)")
    device = torch.device(device) if device is not None else backbone.device
    data = _Data(
        feats=F.normalize(features.float(), dim=-1).to(device),
        mask=mask,
        mask_f=mask.float().to(device),
        classnames=list(classnames),
        device=device,
        use_amp=config.precision == "amp" and device.type == "cuda",
        true_labels=true_labels,
    )
    if val is not None:
        vf, data.val_labels = val[0], val[1]
        data.val_mask = val[2].bool() if len(val) > 2 and val[2] is not None else None
        data.val_feats = F.normalize((vf[0] if vf.dim() == 3 else vf).float(), dim=-1).to(device)
    return data


def _handcrafted_prior(model: Classifier, backbone, config: TrainConfig, data: _Data):
    """(t̃, prior) for a method that reads the handcrafted prompt, (None, None) otherwise: t̃ and what the training
    items' candidate sets say of it (ml.prior); for the aligned head also its calibration (T, class bias) and the
    head built from it."""
    if not model.kind.handcrafted:
        return None, None
    hand = handcrafted_class_features(  # t̃: once per run, no grad
        model.text_encoder, backbone.tokenizer, data.classnames, config.templates, data.device
    )  # [K, D]
    feats0, mask = data.feats[0], data.mask
    with torch.no_grad():
        hand_logits = model.logit_scale * feats0 @ hand.T  # [N, K]
    prior = prior_trust(hand_logits.cpu(), mask)
    t, bias = calibrate_prior(hand_logits, mask)
    prior.update(temperature=t, **prior_evidence(hand_logits, mask, t, bias))
    prior["trust"] = prior["estimate"] * prior["shrink"]  # what the candidate sets support of the prior
    if model.kind.anchored:  # the head's anchor: the calibrated prior, shrunk as far as the sets fail to support it
        g = prior["shrink"]
        model.set_prior(g * (model.logit_scale / t) * hand, g * bias.to(data.device), data.device)
    return hand, prior


def _trainer(model: Classifier, config: TrainConfig, data: _Data, hand, prior, ckpt: Path | None, meta) -> _Trainer:
    """The loss, the SGD optimiser with its cosine schedule and the (fp16) gradient scaler of one run, resumed from
    the checkpoint when there is one, with RC's feature graph when ``graph_weight`` > 0."""
    v_total, n, d, _ = data.shape
    loss_fn = build_loss(config.loss, data.mask, epochs=config.epochs, feature_dim=d, seed=config.seed)
    loss_fn = loss_fn.to(data.device)
    if 1 < v_total < loss_fn.n_views:
        raise ValueError(
            f"loss {config.loss}: needs {loss_fn.n_views} distinct feature views per item, got {v_total} "
            f"(encode at least {loss_fn.n_views}, see views_needed)"
        )
    params = [p for p in model.learner().parameters() if p.requires_grad] + loss_fn.trainable_parameters()
    # aligned head: the residual's decay is prior_strength / n (MAP: a fixed Gaussian prior on it against n items'
    # mean loss), applied as a proximal step after each update (stable at any strength, unlike lr * decay > 2 in SGD)
    prox = config.prior_strength / n if model.kind.anchored and config.prior_strength > 0 else 0.0
    decay = 0.0 if prox else config.weight_decay
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    # fp16 autocast needs loss scaling (small gradients underflow in fp16); disabled, the scaler is a pass-through
    scaler = torch.amp.GradScaler("cuda", enabled=data.use_amp)
    trainer = _Trainer(model, loss_fn, optimizer, scheduler, scaler, prox, hand, prior)
    if ckpt is not None and ckpt.is_file():
        trainer.resume(_load_checkpoint(ckpt, meta, data.device))
    if config.graph_weight > 0:  # transductive: RC's confidences propagate over the training items' feature graph
        _attach_graph(model, loss_fn, data.feats[0], data.mask_f, config, init=trainer.epoch == 0, prior=prior)
    return trainer


def _epoch(t: _Trainer, data: _Data, config: TrainConfig, epoch: int, should_cancel) -> EpochMetrics:
    """One epoch of SGD steps, then its metrics (losses averaged over items, label churn against the last epoch,
    accuracies when true labels or validation features are given); appended to ``t.history``."""
    t0 = time.perf_counter()
    _, n, _, _ = data.shape
    model, loss_fn, use_amp = t.model, t.loss_fn, data.use_amp
    loss_fn.set_epoch(epoch)
    alpha = mix_alpha(config.mix, config.mix_alpha, epoch, config.epochs, t.prior and t.prior["trust"])
    batches, view_idx = _epoch_plan(config.seed, epoch, n, data.shape[0], loss_fn.n_views, config.batch_size)
    view_idx = view_idx.to(data.device)
    model.learner().train()
    total, count = 0.0, 0
    pll_total, align_total = 0.0, None
    for b in batches:
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled(f"cancelled in epoch {epoch + 1}")
        idx = b.to(data.device)
        f_views = [data.feats[view_idx[idx, j], idx] for j in range(loss_fn.n_views)]  # each [B, D]
        batch = PLLBatch(logits=[], mask=data.mask_f[idx], index=idx, features=f_views)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            loss = step_loss(model, loss_fn, batch, config.method, t.hand, alpha)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)  # skipped when the scaled gradients overflowed (then the scale shrinks)
        t.scaler.update()
        if t.prox:  # argmin_w ||w - w'||² / (2 lr) + prox ||w||² / 2
            with torch.no_grad():
                model.probe.fc.weight.div_(1.0 + t.optimizer.param_groups[0]["lr"] * t.prox)
        if loss_fn.needs_after_step:  # fresh forward of the same batch after the step (RC, LWS); its text
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):  # pass, with grad,
                z = model.logits([f_views[0]], update_stats=False)[0]  # is reused by the next step
            loss_fn.after_step(z.detach().float(), batch)
        total += float(loss.detach()) * len(b)
        pll_total += float(batch.pll_loss) * len(b)
        if batch.align_loss is not None:
            align_total = (align_total or 0.0) + float(batch.align_loss) * len(b)
        count += len(b)
    t.scheduler.step()

    model.learner().eval()
    class_feats, scale, bias = model.deployable()
    train_acc = val_acc = churn = None
    labels, _, _ = disambiguate(data.feats[0], class_feats, scale, data.mask, bias)
    if t.labels is not None:
        churn = float((labels != t.labels.cpu()).float().mean())
    t.labels = labels
    if data.true_labels is not None:
        train_acc = float((labels == data.true_labels.cpu()).float().mean())
    if data.val_feats is not None:
        vl, _, _ = disambiguate(data.val_feats, class_feats, scale, data.val_mask, bias)
        val_acc = float((vl == data.val_labels.cpu()).float().mean())
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
    t.history.append(metrics)
    return metrics


@torch.no_grad()
def _attach_graph(model: Classifier, loss_fn, feats0, mask_f, config: TrainConfig, *, init: bool, prior=None) -> None:
    """The training items' kNN graph for RC's confidence updates; on a fresh run the confidences start as the
    propagated prior (aligned head) or the propagated uniform sets (ml.prior.propagate)."""
    neighbours = knn_graph(feats0, config.graph_k)
    loss_fn.set_graph(neighbours, config.graph_weight)
    if prior is not None:
        prior["graph_purity"] = graph_purity(mask_f.cpu(), neighbours.cpu())
    if init:
        start = candidate_softmax(model.probe.prior_logits(feats0), mask_f) if model.kind.anchored else mask_f
        loss_fn.confidence.copy_(propagate(start, mask_f, neighbours, config.graph_weight))
