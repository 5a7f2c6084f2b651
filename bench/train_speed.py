"""Training speed: this trainer (cached features, truncated text pass) against an official-style loop.

Both runs train the same prompt learner on the same images, candidate sets, seed, batch order, loss, alignment and
SGD/cosine settings, with augmentation off (the eval transform only), so they compute the same training:

* **ours**: `ml.features.encode_images` once (view 0), then `ml.train.fit` on the cached features (the text tower
  sees only the K prompts, truncated after the longest real token, see ml.text_encoder).
* **naive**: written like the official CoOpPLL code (method.md 1.4), independently of `fit`: every forward runs the
  frozen image encoder on the batch's pixels (under no_grad) and the text tower over the full context length; RC /
  LWS's after-step confidence update is a fresh forward of the same batch, image encoder included (as the official
  `after_update` does). The official trainer encodes each batch a third time (`dual_forward` for the teacher); this
  loop shares one encoding between the teacher and the learned logits, and decodes + preprocesses the pixels once
  before training instead of in a DataLoader every step: both make the naive loop faster, so the reported speedup
  is a lower bound against the official code.

Speedup = mean naive epoch time / mean ours epoch time (the one-time feature encoding of ours is amortised over the
epochs and cached on disk across runs; it is reported separately, together with the end-to-end ratio).
Time breakdown per phase with time.perf_counter (CUDA synchronised): image encoding, text pass (forward), backward,
optimiser step, other. Mixed precision (fp16 autocast) on CUDA, fp32 on CPU, in both runs.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

PHASES = ("image", "text", "backward", "optimizer", "other")
PHASE_LABELS = {
    "image": "image encoding",
    "text": "text pass (fwd)",
    "backward": "backward",
    "optimizer": "optimiser step",
    "other": "other",
}
BENCH_METHODS = ("prompt_alignment", "coop")


@dataclass(frozen=True)
class TrainSpeedRun:
    """What both runs train on: the same backbone, images, candidate sets, config, device and accuracy set."""

    backbone: object
    images: Sequence[bytes]
    candidates: torch.Tensor  # (N, K) bool
    classnames: Sequence[str]
    config: object  # ml.train.TrainConfig
    device: torch.device
    test_feats: torch.Tensor
    test_labels: torch.Tensor

    def training(self) -> tuple:
        """backbone, candidates, classnames, config, device: what a run trains with."""
        return self.backbone, self.candidates, self.classnames, self.config, self.device


@dataclass
class RunFigures:
    name: str  # "ours" | "naive"
    setup_seconds: float  # one-time work before the epochs (ours: feature encoding + fit setup; naive: pixels + setup)
    epoch_seconds: list[float]  # wall time of each epoch
    phases: dict[str, float]  # seconds per phase (PHASES), summed over all epochs
    accuracy: float  # top-1 accuracy on the test images, percent
    text_tokens: int  # sequence length the text tower runs at
    encode_seconds: float = 0.0  # part of setup_seconds: one-time image feature encoding (ours)
    class_features: torch.Tensor | None = None  # (K, D) the learned, normalised class text features (CPU)

    @property
    def mean_epoch(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds)

    @property
    def total_seconds(self) -> float:
        return self.setup_seconds + sum(self.epoch_seconds)


@dataclass
class TrainSpeedResult:
    ours: RunFigures
    naive: RunFigures
    speedup: float  # mean naive epoch / mean ours epoch
    end_to_end_speedup: float  # naive total / ours total, one-time work included
    test_images: int
    lines: list[str] = field(default_factory=list)  # everything printed; the last is the summary line

    @property
    def summary(self) -> str:
        return summary_line(self.speedup, self.ours.accuracy, self.naive.accuracy)


def summary_line(speedup: float, acc_ours: float, acc_naive: float) -> str:
    return f"speedup={speedup:.2f} acc_ours={acc_ours:.2f} acc_naive={acc_naive:.2f}"


class _Clock:
    """perf_counter that waits for queued CUDA work first (CPU torch is synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=device.type == "cuda")


def _decode_pixels(backbone, images: Sequence[bytes]) -> torch.Tensor:
    """(N, 3, S, S) eval-transform pixels, decoded once (PIL + the backbone's own preprocess)."""
    from PIL import Image

    out = []
    for data in images:
        with Image.open(io.BytesIO(data)) as im:
            out.append(backbone.preprocess(im.convert("RGB")))
    return torch.stack(out)


def _accuracy(test_feats: torch.Tensor, test_labels: torch.Tensor, class_feats: torch.Tensor, scale: float) -> float:
    from ml.train import disambiguate

    labels, _, _ = disambiguate(test_feats, class_feats, scale)
    return 100.0 * float((labels == test_labels.cpu()).float().mean())


# --- ours: ml.train.fit on cached features, instrumented from outside -------------------------------------------


@contextlib.contextmanager
def _instrument_fit(clock: _Clock, phases: dict[str, float]) -> Iterator[None]:
    """Attribute fit()'s time to phases without changing it: wraps the text pass (Classifier.class_features) and
    the step loss, and times the optimiser with global step hooks. backward = end of the step loss -> optimiser."""
    import ml.train as train_mod

    orig_text = train_mod.Classifier.class_features
    orig_step_loss = train_mod.step_loss
    marks = {"fwd_end": None, "opt_start": None}

    def class_features(self):
        t0 = clock()
        out = orig_text(self)
        phases["text"] += clock() - t0
        return out

    def step_loss(*args, **kwargs):
        out = orig_step_loss(*args, **kwargs)
        marks["fwd_end"] = clock()
        return out

    def pre_hook(optimizer, args, kwargs):
        t = clock()
        if marks["fwd_end"] is not None:
            phases["backward"] += t - marks["fwd_end"]  # zero_grad + loss.backward()
            marks["fwd_end"] = None
        marks["opt_start"] = t

    def post_hook(optimizer, args, kwargs):
        if marks["opt_start"] is not None:
            phases["optimizer"] += clock() - marks["opt_start"]
            marks["opt_start"] = None

    h1 = register_optimizer_step_pre_hook(pre_hook)
    h2 = register_optimizer_step_post_hook(post_hook)
    train_mod.Classifier.class_features = class_features
    train_mod.step_loss = step_loss
    try:
        yield
    finally:
        train_mod.Classifier.class_features = orig_text
        train_mod.step_loss = orig_step_loss
        h1.remove()
        h2.remove()


def run_ours(run: TrainSpeedRun) -> RunFigures:
    from ml.features import encode_images
    from ml.train import fit

    backbone, candidates, classnames, config, device = run.training()
    clock = _Clock(device)
    phases = dict.fromkeys(PHASES, 0.0)
    t0 = clock()
    with _autocast(device):
        feats = encode_images(backbone, run.images, views=1, batch_size=64)  # (1, N, D): once, no disk cache
    encode_s = clock() - t0
    t1 = clock()
    with _instrument_fit(clock, phases):
        result = fit(backbone, feats, candidates, classnames, config, device=device)
    fit_s = clock() - t1
    epoch_s = [m.seconds for m in result.history]
    text_s, bwd_s, opt_s = phases["text"], phases["backward"], phases["optimizer"]
    phases["other"] = max(sum(epoch_s) - text_s - bwd_s - opt_s, 0.0)
    phases["image"] = 0.0  # per epoch: none (the one-time encoding is setup)
    tokens = _ours_text_tokens(backbone, classnames, config, device)
    acc = _accuracy(run.test_feats, run.test_labels, result.class_features, result.logit_scale)
    setup_s = encode_s + fit_s - sum(epoch_s)
    return RunFigures("ours", setup_s, epoch_s, phases, acc, tokens, encode_s, result.class_features.cpu())


def _ours_text_tokens(backbone, classnames, config, device) -> int:
    from ml.prompt_learner import PromptLearner
    from ml.text_encoder import TextEncoder

    te = TextEncoder(backbone.model)
    pl = PromptLearner(_pl_config(config), classnames, te, backbone.tokenizer, device)
    if te.truncate and te.can_truncate:
        return int(te.real_lengths(pl.token_ids).max())
    return int(pl.token_ids.shape[1])


def _pl_config(config):
    from ml.prompt_learner import PromptLearnerConfig

    return PromptLearnerConfig(
        n_ctx=config.n_ctx,
        ctx_init=config.ctx_init,
        class_token_position=config.class_token_position,
        csc=config.csc,
        seed=config.seed,
    )


# --- naive: the official-style loop -----------------------------------------------------------------------------


def run_naive(run: TrainSpeedRun) -> RunFigures:
    from ml.align import align_loss, combine, mix_alpha, teacher
    from ml.losses import PLLBatch, build_loss
    from ml.prompt_learner import PromptLearner
    from ml.prompts import clean_classname
    from ml.text_encoder import TextEncoder
    from ml.train import _epoch_plan

    backbone, candidates, classnames, config, device = run.training()
    clock = _Clock(device)
    phases = dict.fromkeys(PHASES, 0.0)
    use_amp = device.type == "cuda"
    t_setup = clock()
    pixels = _decode_pixels(backbone, run.images)  # [N, 3, S, S], decoded once (the official loader does it per step)
    n, k = candidates.shape
    model = backbone.model
    text_encoder = TextEncoder(model, truncate=False)  # full context length, as CustomCLIP's TextEncoder
    learner = PromptLearner(_pl_config(config), classnames, text_encoder, backbone.tokenizer, device)
    scale = float(model.logit_scale.exp().item())
    hand = None
    if config.method == "prompt_alignment":
        with torch.no_grad(), torch.autocast("cuda", torch.float16, enabled=use_amp):  # t̃: once, full context
            per_t = []
            for t in config.templates:
                ids = backbone.tokenizer([t.format(clean_classname(c)) for c in classnames]).to(device)
                per_t.append(F.normalize(model.encode_text(ids).float(), dim=-1))
            hand = F.normalize(torch.stack(per_t).mean(0), dim=-1)  # [K, D]
    mask = candidates.bool().cpu()
    mask_f = mask.float().to(device)
    loss_fn = build_loss(config.loss, mask, epochs=config.epochs, feature_dim=backbone.embed_dim).to(device)
    params = [learner.ctx, *loss_fn.trainable_parameters()]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    setup_s = clock() - t_setup

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CustomCLIP.forward: (normalised image features, learned logits); image encoder runs every time."""
        t0 = clock()
        with torch.no_grad():
            f = F.normalize(model.encode_image(x).float(), dim=-1)  # [B, D]
        t1 = clock()
        t_cls = F.normalize(text_encoder(learner(), learner.token_ids), dim=-1)  # [K, D], full context length
        logits = scale * f @ t_cls.T  # [B, K]
        t2 = clock()
        phases["image"] += t1 - t0
        phases["text"] += t2 - t1
        return f, logits

    epoch_s: list[float] = []
    for epoch in range(config.epochs):
        t_epoch = clock()
        loss_fn.set_epoch(epoch)
        alpha = mix_alpha(config.mix, config.mix_alpha, epoch, config.epochs)
        batches, _ = _epoch_plan(config.seed, epoch, n, 1, loss_fn.n_views, config.batch_size)  # same order
        learner.train()
        for b in batches:
            idx = b.to(device)
            x = pixels[b].to(device)
            with torch.autocast("cuda", torch.float16, enabled=use_amp):
                f, z = forward(x)
                batch = PLLBatch(logits=[z.float()] * loss_fn.n_views, mask=mask_f[idx], index=idx)
                batch.features = [f] * loss_fn.n_views
                loss = loss_fn(batch)
                if config.method == "prompt_alignment":
                    q = teacher(scale * f @ hand.T, batch.mask, batch.logits[0], alpha)
                    loss = combine(loss, align_loss(batch.logits[0], q))
            t0 = clock()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t1 = clock()
            optimizer.step()
            phases["backward"] += t1 - t0
            phases["optimizer"] += clock() - t1
            if loss_fn.needs_after_step:  # official after_update: self.model(batch) again, image encoder included
                with torch.no_grad(), torch.autocast("cuda", torch.float16, enabled=use_amp):
                    _, z2 = forward(x)
                    loss_fn.after_step(z2.float(), batch)
        scheduler.step()
        epoch_s.append(clock() - t_epoch)
    total = sum(epoch_s)
    phases["other"] = max(total - phases["image"] - phases["text"] - phases["backward"] - phases["optimizer"], 0.0)
    learner.eval()
    with torch.no_grad():
        class_feats = F.normalize(text_encoder(learner(), learner.token_ids), dim=-1).float().cpu()
    acc = _accuracy(run.test_feats, run.test_labels, class_feats, scale)
    tokens = int(learner.token_ids.shape[1])
    return RunFigures("naive", setup_s, epoch_s, phases, acc, tokens, class_features=class_feats)


# --- the benchmark -----------------------------------------------------------------------------------------------


def run_train_speed(
    backbone,
    train_images: Sequence[bytes],
    candidates: torch.Tensor,
    classnames: Sequence[str],
    test_images: Sequence[bytes],
    test_labels: torch.Tensor,
    *,
    config=None,
    device: str | torch.device | None = None,
    out: Callable[[str], None] | None = print,
    header: Sequence[str] = (),
) -> TrainSpeedResult:
    """Train twice (naive, then ours) and print per-epoch times, the breakdown and the summary line (last).

    train_images: encoded image files; candidates: (N, K) bool; test_images / test_labels: accuracy set.
    config: ml.train.TrainConfig (method prompt_alignment or coop); its precision is set from the device.
    """
    from ml.features import encode_images
    from ml.train import TrainConfig, _check_config, _epoch_plan

    config = config or TrainConfig()
    if config.method not in BENCH_METHODS:
        raise ValueError(f"method: the speed benchmark trains prompts, expected one of {BENCH_METHODS}")
    device = torch.device(device) if device is not None else backbone.device
    config = replace(config, precision="amp" if device.type == "cuda" else "fp32")
    _check_config(config)
    n = len(train_images)
    if candidates.shape != (n, len(classnames)):
        raise ValueError(f"candidates: shape {tuple(candidates.shape)} != (N={n}, K={len(classnames)})")
    if len(test_images) == 0 or len(test_labels) != len(test_images):
        raise ValueError("need at least one test image and one label per test image")
    lines: list[str] = []

    def emit(line: str) -> None:
        lines.append(line)
        if out is not None:
            out(line)

    for line in header:
        emit(line)
    with _autocast(device):  # the accuracy set: encoded once, shared by both runs, not timed
        test_feats = encode_images(backbone, test_images, views=1, batch_size=64)[0]
    run = TrainSpeedRun(backbone, train_images, candidates, classnames, config, device, test_feats, test_labels)
    naive = run_naive(run)
    ours = run_ours(run)
    speedup = naive.mean_epoch / max(ours.mean_epoch, 1e-12)
    e2e = naive.total_seconds / max(ours.total_seconds, 1e-12)
    sizes = candidates.float().sum(1)
    steps = len(_epoch_plan(config.seed, 0, n, 1, 1, config.batch_size)[0])

    emit(
        f"setup: device={device.type} precision={config.precision} torch_threads={torch.get_num_threads()}"
        f" backbone={backbone.id}"
    )
    emit(
        f"training: {n} images, {len(classnames)} classes, mean |S|={float(sizes.mean()):.2f},"
        f" method={config.method} loss={config.loss} epochs={config.epochs} batch={config.batch_size}"
        f" ({steps} steps/epoch) seed={config.seed}, augmentation off (eval transform) in both"
    )
    emit(
        f"naive: image encoder on every forward (loss forward"
        f"{' + after-step update' if _needs_after_step(config) else ''}), text tower at full context"
        f" length {naive.text_tokens}; pixels decoded once ({naive.setup_seconds:.2f} s setup)"
    )
    emit(
        f"ours: features encoded once ({ours.encode_seconds:.2f} s for {n} images), text tower truncated to"
        f" {ours.text_tokens} tokens; one-time setup total {ours.setup_seconds:.2f} s"
    )
    emit("epoch  ours_s  naive_s")
    for i, (a, b) in enumerate(zip(ours.epoch_seconds, naive.epoch_seconds, strict=True), start=1):
        emit(f"{i:>5}  {a:6.3f}  {b:7.3f}")
    emit(f"mean epoch: ours {ours.mean_epoch:.3f} s, naive {naive.mean_epoch:.3f} s")
    emit("time per epoch by phase (s, mean over epochs; share of the epoch):")
    for fig in (ours, naive):
        parts = []
        for p in PHASES:
            per = fig.phases[p] / len(fig.epoch_seconds)
            share = 100.0 * fig.phases[p] / max(sum(fig.epoch_seconds), 1e-12)
            parts.append(f"{PHASE_LABELS[p]} {per:.3f} ({share:.0f}%)")
        emit(f"  {fig.name:<5}: " + ", ".join(parts))
    emit(
        f"end-to-end (one-time work included): ours {ours.total_seconds:.2f} s, naive {naive.total_seconds:.2f} s"
        f" ({e2e:.2f}x)"
    )
    emit(
        f"accuracy on {len(test_images)} test images: ours {ours.accuracy:.2f} %, naive {naive.accuracy:.2f} %"
        f" (difference {abs(ours.accuracy - naive.accuracy):.2f} points)"
    )
    result = TrainSpeedResult(ours, naive, speedup, e2e, len(test_images), lines)
    emit(result.summary)
    return result


def _needs_after_step(config) -> bool:
    from ml.losses import LOSSES

    return bool(LOSSES[config.loss.lower()].needs_after_step)


def run_cifar10_train_speed(
    *,
    backbone: str = "reference",
    cifar10_path: str | Path,
    cache_dir: str | Path | None = None,
    shots: int = 16,
    q: float = 0.3,
    epochs: int = 5,
    seed: int = 1,
    method: str = "prompt_alignment",
    loss: str = "rc",
    device: str = "cpu",
    test_images: int = 1000,
    out: Callable[[str], None] | None = print,
) -> TrainSpeedResult:
    """The default benchmark: `shots` per class of CIFAR-10 train, candidate sets with rate q, `test_images`
    test images (an equal, seeded share per class)."""
    from bench.data import few_shot_indices, load_cifar10, partialize
    from ml.backbone import load_backbone
    from ml.train import TrainConfig

    if test_images < 1:
        raise ValueError(f"test_images must be >= 1, got {test_images}")
    bb = load_backbone(backbone, device=device, cache_dir=cache_dir)
    train = load_cifar10(cifar10_path, "train")
    train = train.subset(few_shot_indices(train.labels, shots, seed))
    mask = partialize(train.labels, len(train.classnames), q, seed)
    per_class = max(1, math.ceil(test_images / len(train.classnames)))
    test = load_cifar10(cifar10_path, "test", per_class=per_class, seed=seed)
    if len(test) > test_images:
        keep = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:test_images]
        test = test.subset(torch.sort(keep).values)
    config = TrainConfig(method=method, loss=loss, epochs=epochs, seed=seed)
    header = [
        f"train-speed: CIFAR-10 {shots} shots/class ({len(train)} images), q={q}, backbone {backbone!r},"
        f" accuracy on {len(test)} test images"
    ]
    return run_train_speed(
        bb,
        train.images,
        mask,
        train.classnames,
        test.images,
        test.labels,
        config=config,
        device=device,
        out=out,
        header=header,
    )
