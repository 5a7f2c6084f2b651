"""One training job as ml sees it: images, candidate sets and a config in; labels and a deployable classifier out.

:func:`run_job` is the only entry point the worker calls. Every ML decision of a job is made here, in this order:

1. **training set**: an item whose tag is certain (``certain[i]``) has the candidate set ``{tag}``; the audited items
   (``spec.audited``, a random sample a person answered) are held out as the yardstick and validation set; job param
   ``shots`` keeps at most that many training items per class (:func:`select_training_items`).
2. **encoding**: ``views`` feature views of the training items (view 0 clean, the others augmented; raised to the
   number of distinct views the loss takes per step, PiCO 2, PLCR 3, when ``views`` > 1: :func:`encoded_views`) and
   the clean view of every item, through the on-disk :class:`ml.features.FeatureCache` (a re-run encodes nothing);
   the caller may fill the cache first by other means (``callbacks.encode_elsewhere``: the worker's shards).
3. **candidate pruning** (``knn_vote``): neighbour voting on the training candidate sets (``ml/knn_vote.py``).
4. **fit** (``ml.train.fit``) with an epoch checkpoint, so a re-run resumes; a checkpoint written for other data or
   another config is discarded (``callbacks.checkpoint_discarded``) and training restarts from epoch 1.
5. **deployed classifier**: the trained one, or mixed with the handcrafted prompts (``ml/ensemble.py``).
6. **calibration and labels** (``ml.quality.assess``): labels for every item restricted to its own (unpruned)
   candidates, confidences calibrated on the audit (cross-fitted) or by consistency with the candidate sets, and the
   job's quality report (the estimate with its interval and basis, per tag, confusions, per-epoch losses and churn).
7. **export**: the model's head (class matrix, bias and logit scale, the temperature folded into them, so /predict's
   scores are calibrated too) and its side files into ``export_dir`` (``ml.export.export_head``). The image tower
   is the backbone's, shared by all its models: the caller stores it once (``ml.export.export_tower``, keyed by
   ``ml.export.tower_address``).

It knows nothing of rows, settings or storage: the caller passes paths, callbacks and folders.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ml.backbone import Backbone
from ml.errors import InvalidCandidates, TrainingCancelled
from ml.train import EpochMetrics, TrainConfig

#: Job params that are not TrainConfig fields (the API's run params; tests tie the two lists).
RUN_PARAMS = ("shots", "views", "knn_vote", "knn_k", "knn_tau", "handcrafted_mix")


def is_stale_checkpoint_error(exc: BaseException) -> bool:
    """True for ``ml.train.fit``'s ValueError about a checkpoint written for other data or another config."""
    text = str(exc)
    return isinstance(exc, ValueError) and text.startswith("checkpoint ") and "different data or config" in text


def train_config(params: dict, prompt_template: str | None = None) -> TrainConfig:
    """``TrainConfig`` from a job's params (unknown keys are ignored: the API rejected them already)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in params.items() if k in fields and v is not None}
    if "templates" in kwargs:
        kwargs["templates"] = tuple(kwargs["templates"])
    elif prompt_template:
        kwargs["templates"] = (prompt_template,)
    return TrainConfig(**kwargs)


def encoded_views(views: int, config: TrainConfig) -> int:
    """Feature views to encode per training item: ``views`` = 1 means no augmentation (every view of a step is the
    clean one); otherwise at least as many as the loss takes distinct views per step (``ml.train.views_needed``)."""
    from ml.train import views_needed

    return 1 if views <= 1 else max(views, views_needed(config))


def select_training_items(candidates: list[list[str]], certain: list[bool], shots: int | None, seed: int) -> list[int]:
    """Indices of the items to train on: all of them, or at most ``shots`` per class.

    Items are visited in a seeded random order (certain ones first); each is counted for the candidate class that
    has the fewest items so far, and skipped when all its candidates are full.
    """
    n = len(candidates)
    if not shots:
        return list(range(n))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: not certain[i])  # stable: certain items first, each group in seeded order
    counts: dict[str, int] = {}
    chosen = []
    for i in order:
        open_classes = [c for c in candidates[i] if counts.get(c, 0) < shots]
        if not open_classes:
            continue
        cls = min(open_classes, key=lambda c: counts.get(c, 0))
        counts[cls] = counts.get(cls, 0) + 1
        chosen.append(i)
    return sorted(chosen)


@dataclasses.dataclass
class JobSpec:
    """What one job trains on. ``candidates[i]`` is already ``[tag]`` where ``certain[i]``."""

    classes: list[str]
    candidates: list[list[str]]
    certain: list[bool]
    images: Sequence[str | Path]  # one readable image file per item
    shas: Sequence[str]  # sha256 of each image: the feature cache key
    config: TrainConfig
    views: int = 1
    shots: int | None = None
    knn_vote: bool = False
    knn_k: int | None = None
    knn_tau: float | None = None
    handcrafted_mix: float = 0.0
    templates: Sequence[str] | None = None  # the job's own templates, for the handcrafted mix
    original_candidates: list[list[str]] | None = None  # each item's candidate set before a certain tag replaced it
    # items of a random audit a person answered: item index -> true class index. Held out of training (the yardstick
    # of ml.quality.assess: each is judged over its original set as if its tag were unknown), labelled with its tag.
    audited: dict[int, int] = dataclasses.field(default_factory=dict)


def _ignore(*_args, **_kwargs) -> None:
    return None


@dataclasses.dataclass
class Callbacks:
    """How a job reports and is stopped. ``stage(name, data)`` opens a stage; ``progress(stage, done)`` reports
    0..1 within it; ``epoch(metrics)`` after each epoch; ``checkpoint_discarded(detail)`` when a stale checkpoint
    is dropped; ``should_cancel()`` is polled between batches and steps. ``encode_elsewhere(needs)`` is called once
    before the encoding with ``(sha256, views)`` of every image the job needs features of (views ``0..views-1``), in
    item order: the caller may put those features into the cache by other means (the worker spreads them over its
    free workers, ``worker.shards``); whatever is still missing afterwards is encoded here."""

    stage: Callable[[str, dict], None] = _ignore
    progress: Callable[[str, float], None] = _ignore
    epoch: Callable[[EpochMetrics], None] = _ignore
    checkpoint_discarded: Callable[[str], None] = _ignore
    should_cancel: Callable[[], bool] = lambda: False
    encode_elsewhere: Callable[[list[tuple[str, int]]], None] = _ignore


@dataclasses.dataclass
class JobResult:
    labels: list[int]  # class index per item
    confidence: list[float]
    margin: list[float]
    files: dict[str, Path]  # exported files by name (head.npz, classes.json, preprocess.json), inside export_dir
    history: list[EpochMetrics]
    train_items: int
    train_seconds: float
    knn: dict | None  # what candidate pruning did, or None
    probs: list[dict[str, float]] | None = None  # per item: candidate tag -> probability (over its candidates)
    quality: dict | None = None  # ml.quality.assess's report: how good the labels are (docs/quality.md)


def run_job(
    backbone: Backbone,
    spec: JobSpec,
    *,
    device: str,
    cache,
    checkpoint_path: Path,
    export_dir: Path,
    callbacks: Callbacks | None = None,
    batch_size: int = 64,
    decode_workers: int = 0,
) -> JobResult:
    """Train on ``spec`` and label every item (see the module docstring). ``batch_size`` images per model call and
    ``decode_workers`` threads decoding ahead of it (``ml.features.encode_images``) while encoding.

    Raises ``InvalidCandidates`` for sets that cannot be trained on and ``TrainingCancelled`` on a cancel.
    """
    from ml.ensemble import deployed_classifier
    from ml.export import export_head
    from ml.quality import assess
    from ml.train import candidates_to_mask, class_logits

    cb = callbacks or Callbacks()
    cfg = spec.config
    try:
        mask = candidates_to_mask(spec.candidates, spec.classes)  # (N, K) bool
    except ValueError as exc:
        raise InvalidCandidates(str(exc)) from exc
    n = len(spec.candidates)
    original = spec.original_candidates or spec.candidates
    holdout = sorted(int(i) for i in spec.audited)  # the audit: never trained on, the yardstick
    hold_mask = hold_target = None
    if holdout:
        try:
            sets = [sorted({*original[i], spec.classes[spec.audited[i]]}) for i in holdout]
            hold_mask = candidates_to_mask(sets, spec.classes)
        except (ValueError, IndexError, KeyError) as exc:
            raise InvalidCandidates(f"audited items: {exc}") from exc
        hold_target = torch.tensor([spec.audited[i] for i in holdout], dtype=torch.long)
    held = set(holdout)
    pool = [i for i in range(n) if i not in held]  # every item when nothing is held out
    chosen = select_training_items(
        [spec.candidates[i] for i in pool], [spec.certain[i] for i in pool], spec.shots, cfg.seed
    )
    train_idx = [pool[j] for j in chosen]
    spec = dataclasses.replace(spec, views=encoded_views(spec.views, cfg))

    cb.stage(
        "encoding", {"items": len(spec.images), "train_items": len(train_idx), "views": spec.views, "device": device}
    )
    train_feats, eval_feats = _encode(backbone, spec, train_idx, cache, cb, batch_size, decode_workers)

    train_mask = mask[torch.tensor(train_idx, dtype=torch.long)]
    knn = None
    if spec.knn_vote:
        train_mask, knn = _prune(train_feats[0], train_mask, int(spec.knn_k), float(spec.knn_tau))

    cb.stage(
        "training",
        {
            "epochs": cfg.epochs,
            "method": cfg.method,
            "loss": cfg.loss,
            "resumed": checkpoint_path.exists(),
            "holdout_items": len(holdout),
        },
    )
    val = (eval_feats[holdout], hold_target, hold_mask) if holdout else None
    started = time.perf_counter()
    result = _fit(backbone, train_feats, train_mask, spec.classes, cfg, checkpoint_path, device, cb, val)
    train_seconds = time.perf_counter() - started
    if cb.should_cancel():
        raise TrainingCancelled("cancel requested")

    deployed = deployed_classifier(backbone, result, spec.classes, spec.handcrafted_mix, spec.templates)
    cb.stage("labelling", {"items": len(spec.images)})
    logits = class_logits(eval_feats, deployed.class_features, deployed.logit_scale, deployed.bias)
    judged = mask.clone()  # audited items are judged over their original sets
    if holdout:
        judged[torch.tensor(holdout, dtype=torch.long)] = hold_mask
    audited = dict(zip(holdout, hold_target.tolist(), strict=True)) if holdout else {}
    a = assess(
        logits.cpu(),
        judged,
        classes=spec.classes,
        certain=spec.certain,
        audited=audited,
        features=eval_feats.cpu(),
        history=result.history,
        seed=cfg.seed,
    )
    t, labels, confidence, margin, quality, p = a.temperature, a.labels, a.confidence, a.margin, a.report, a.probs
    probs = [
        {spec.classes[k]: round(float(p[i, k]), 4) for k in range(len(spec.classes)) if judged[i, k]}
        for i in range(len(spec.images))
    ]
    if cb.should_cancel():
        raise TrainingCancelled("cancel requested")

    cb.stage("exporting", {})
    bias = None if deployed.bias is None else deployed.bias / t
    files = export_head(
        deployed.class_features,
        deployed.logit_scale / t,
        spec.classes,
        backbone.preprocess_cfg,
        export_dir,
        class_bias=bias,
    )
    return JobResult(
        labels=[int(x) for x in labels],
        confidence=[float(x) for x in confidence],
        margin=[float(x) for x in margin],
        files={Path(p).name: Path(p) for p in files.values()},
        history=list(result.history),
        train_items=len(train_idx),
        train_seconds=train_seconds,
        knn=knn,
        probs=probs,
        quality=quality,
    )


def feature_needs(shas: Sequence[str], train_idx: list[int], views: int) -> list[tuple[str, int]]:
    """``(sha256, views)`` of every image whose features a job needs, in item order, each image once: ``views``
    for a training item, the clean view only for the others."""
    train = set(train_idx)
    needs: dict[str, int] = {}
    for i, sha in enumerate(shas):
        needs[sha] = max(needs.get(sha, 0), views if i in train else 1)
    return list(needs.items())


def _encode(
    backbone: Backbone, spec: JobSpec, train_idx: list[int], cache, cb: Callbacks, batch_size: int, decode_workers: int
):
    """(V, n_train, D) training views and (N, D) clean features of every item; one pass when all items train."""
    from ml.features import encode_images

    n = len(spec.images)
    cb.encode_elsewhere(feature_needs(spec.shas, train_idx, spec.views))
    all_train = len(train_idx) == n
    total = n * (spec.views if all_train else 1) + (0 if all_train else len(train_idx) * spec.views)
    done_before = 0

    def on_encode(done: int, _n: int) -> None:
        cb.progress("encoding", (done_before + done) / max(total, 1))

    common = dict(
        cache=cache,
        seed=spec.config.seed,
        batch_size=batch_size,
        decode_workers=decode_workers,
        should_cancel=cb.should_cancel,
        on_progress=on_encode,
    )
    if all_train:
        feats = encode_images(backbone, list(spec.images), shas=list(spec.shas), views=spec.views, **common)
        train_feats, eval_feats = feats, feats[0]
    else:
        sub = [spec.images[i] for i in train_idx]
        train_feats = encode_images(backbone, sub, shas=[spec.shas[i] for i in train_idx], views=spec.views, **common)
        done_before = len(train_idx) * spec.views
        eval_feats = encode_images(backbone, list(spec.images), shas=list(spec.shas), views=1, **common)[0]
    cb.progress("encoding", 1.0)
    return train_feats, eval_feats


def _prune(feats: torch.Tensor, mask: torch.Tensor, k: int, tau: float) -> tuple[torch.Tensor, dict]:
    from ml.knn_vote import prune_candidates

    before = float(mask.sum(dim=1).float().mean())
    pruned = prune_candidates(feats, mask, k, tau)
    after = float(pruned.sum(dim=1).float().mean())
    return pruned, {"k": k, "tau": tau, "mean_set_before": round(before, 3), "mean_set_after": round(after, 3)}


def _fit(backbone, train_feats, train_mask, classes, cfg, checkpoint_path: Path, device: str, cb: Callbacks, val=None):
    """``ml.train.fit``, resumed from ``checkpoint_path``; a checkpoint for other data or config is dropped once."""
    from ml.train import fit

    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)

    def train():
        return fit(
            backbone,
            train_feats,
            train_mask,
            classes,
            cfg,
            val=val,
            on_epoch=cb.epoch,
            should_cancel=cb.should_cancel,
            checkpoint_path=checkpoint_path,
            device=device,
        )

    try:
        return train()
    except ValueError as exc:
        if not (checkpoint_path.is_file() and is_stale_checkpoint_error(exc)):
            raise
        checkpoint_path.unlink(missing_ok=True)
        cb.checkpoint_discarded(str(exc))
        return train()
