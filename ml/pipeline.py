"""One training job as ml sees it, in the three calls the worker makes in this order (``worker.training``):

1. :func:`plan_job` -> :class:`JobPlan`, plain data: the job's config (:func:`job_config`, built from the request's
   params here and nowhere else), the candidate set of each item (an item whose tag is certain has ``{tag}``),
   the hold-out (the audited items: a random sample a person answered, never trained on, the yardstick of
   ``ml.quality.assess``), the training items (job param ``shots`` keeps at most that many per class,
   :func:`select_training_items`) and the features they need (:attr:`JobPlan.needs`): ``views`` feature views of
   each training item (view 0 clean, the others augmented; raised to the number of distinct views the loss takes
   per step, PiCO 2, PLCR 3, when ``views`` > 1: :func:`encoded_views`) and the clean view of every item. Bad
   candidate sets are an ``InvalidCandidates`` here, before anything is encoded.
2. :func:`encode_plan` -> :class:`PlanFeatures`: those features from the on-disk :class:`ml.features.FeatureCache`
   (a re-run encodes nothing); the worker fills the cache first (its shards, ``worker.shards``) and whatever is
   still missing is encoded here.
3. :func:`run_plan` -> :class:`JobResult`, on those features:

   a. **candidate pruning** (``knn_vote``): neighbour voting on the training candidate sets (``ml/knn_vote.py``);
   b. **fit** (``ml.train.fit``) with an epoch checkpoint, so a re-run resumes; a checkpoint written for other
      data or another config (``StaleCheckpoint``) is discarded (``callbacks.checkpoint_discarded``) and training
      restarts from epoch 1;
   c. **deployed classifier**: the trained one, or mixed with the handcrafted prompts (``ml/ensemble.py``);
   d. **calibration and labels** (``ml.quality.assess``): labels for every item restricted to its own (unpruned)
      candidates (an audited item: its original set), confidences calibrated on the audit (cross-fitted) or by
      consistency with the candidate sets, and the job's quality report (the estimate with its interval and
      basis, per tag, confusions, per-epoch losses and churn);
   e. **export**: the model's head (class matrix, bias and logit scale, the temperature folded into them, so
      /predict's scores are calibrated too) and its side files into ``export_dir`` (``ml.export.export_head``).
      The image tower is the backbone's, shared by all its models: the caller stores it once
      (``ml.export.export_tower``, keyed by ``ml.export.tower_address``).

It knows nothing of rows, settings or storage: the caller passes paths, a cache, folders and :class:`Callbacks`
(progress, cancel, "checkpoint written"); it stores nothing itself but the checkpoint file and the export folder.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ml.backbone import Backbone
from ml.ensemble import deployed_classifier
from ml.errors import InvalidCandidates, StaleCheckpoint, TrainingCancelled
from ml.export import export_head
from ml.features import encode_images
from ml.inference import candidates_to_mask, class_logits
from ml.knn_vote import prune_candidates
from ml.quality import assess
from ml.train import EpochMetrics, TrainConfig, TrainResult, fit, views_needed


def is_stale_checkpoint_error(exc: BaseException) -> bool:
    """True for ``ml.train.fit``'s error about a checkpoint written for other data or another config."""
    return isinstance(exc, StaleCheckpoint)


# --- the job's config: from the request's params, in one place --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Everything a job's params decide: the training run's config and the run params around it."""

    train: TrainConfig
    views: int = 1  # feature views per training item the job asks for (see encoded_views)
    shots: int | None = None
    knn_vote: bool = False
    knn_k: int | None = None
    knn_tau: float | None = None
    handcrafted_mix: float = 0.0
    templates: Sequence[str] | None = None  # the job's own templates, for the handcrafted mix


#: Job params that are not TrainConfig fields: JobConfig's own (the API's run params; tests tie the two lists).
RUN_PARAMS = tuple(f.name for f in dataclasses.fields(JobConfig) if f.name not in ("train", "templates"))


def train_config(params: dict, prompt_template: str | None = None) -> TrainConfig:
    """``TrainConfig`` from a job's params (unknown keys are ignored: the API rejected them already)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in params.items() if k in fields and v is not None}
    if "templates" in kwargs:
        kwargs["templates"] = tuple(kwargs["templates"])
    elif prompt_template:
        kwargs["templates"] = (prompt_template,)
    return TrainConfig(**kwargs)


def job_config(params: dict, prompt_template: str | None = None, *, default_views: int = 1) -> JobConfig:
    """The job's whole config from its params (the API resolved and checked them), the dataset's prompt template
    and the worker's default number of views (``TAGSIFT_TRAIN_VIEWS``)."""
    return JobConfig(
        train=train_config(params, prompt_template),
        views=int(params.get("views") or default_views),
        shots=params.get("shots"),
        knn_vote=bool(params.get("knn_vote")),
        knn_k=params.get("knn_k"),
        knn_tau=params.get("knn_tau"),
        handcrafted_mix=float(params.get("handcrafted_mix") or 0.0),
        templates=params.get("templates"),
    )


# --- 1. the plan -------------------------------------------------------------------------------------------------


def encoded_views(views: int, config: TrainConfig) -> int:
    """Feature views to encode per training item: ``views`` = 1 means no augmentation (every view of a step is the
    clean one); otherwise at least as many as the loss takes distinct views per step (``ml.train.views_needed``)."""
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


def feature_needs(shas: Sequence[str], train_idx: list[int], views: int) -> list[tuple[str, int]]:
    """``(sha256, views)`` of every image whose features a job needs, in item order, each image once: ``views``
    for a training item, the clean view only for the others."""
    train = set(train_idx)
    needs: dict[str, int] = {}
    for i, sha in enumerate(shas):
        needs[sha] = max(needs.get(sha, 0), views if i in train else 1)
    return list(needs.items())


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """What one job trains on and which features it needs: plain data, decided before anything is encoded."""

    classes: list[str]
    candidates: list[list[str]]  # per item: ``[tag]`` where the tag is certain, else its candidate set
    original: list[list[str]]  # per item: its candidate set as given (a certain tag may lie outside it)
    certain: list[bool]
    shas: list[str]  # sha256 of each item's image: the feature cache key
    holdout: list[int]  # the audited items (sorted): held out of training, the yardstick of ml.quality.assess
    train_idx: list[int]  # items trained on (not held out; at most ``shots`` per class)
    views: int  # feature views encoded per training item
    config: JobConfig
    audited: dict[int, int] = dataclasses.field(default_factory=dict)  # audited item -> its true class index

    @property
    def seed(self) -> int:
        return self.config.train.seed

    @property
    def needs(self) -> list[tuple[str, int]]:
        """``(sha256, views)`` of every image whose features the job needs, in item order (:func:`feature_needs`)."""
        return feature_needs(self.shas, self.train_idx, self.views)

    def tags(self) -> list[str | None]:
        return [self.candidates[i][0] if self.certain[i] else None for i in range(len(self.shas))]


def plan_job(
    classes: list[str],
    candidates: list[list[str]],
    tags: list[str | None],
    shas: Sequence[str],
    config: JobConfig,
    audited: dict[int, str] | None = None,
) -> JobPlan:
    """The job's plan (see the module docstring, step 1): ``tags[i]`` is item i's certain tag (a reviewer's or the
    manifest's label) or None; ``audited`` maps the items of a random audit a person answered to their tag (held
    out of training, the estimate's yardstick). Raises ``InvalidCandidates`` for sets that cannot be trained on."""
    sets = [[tag] if tag else c for c, tag in zip(candidates, tags, strict=True)]
    certain = [tag is not None for tag in tags]
    seed = config.train.seed
    index = {c: k for k, c in enumerate(classes)}
    try:
        truth = {int(i): index[tag] for i, tag in (audited or {}).items() if 0 <= int(i) < len(sets)}
    except KeyError as exc:
        raise InvalidCandidates(f"audited items: tag {exc} is not a class") from None
    holdout = sorted(truth)
    plan = JobPlan(
        classes=list(classes),
        candidates=sets,
        original=list(candidates),
        certain=certain,
        shas=list(shas),
        holdout=holdout,
        train_idx=[],
        views=encoded_views(config.views, config.train),
        config=config,
        audited=truth,
    )
    _masks(plan)  # InvalidCandidates now, before anything is fetched or encoded
    held = set(holdout)
    pool = [i for i in range(len(sets)) if i not in held]  # every item when nothing is held out
    chosen = select_training_items([sets[i] for i in pool], [certain[i] for i in pool], config.shots, seed)
    return dataclasses.replace(plan, train_idx=[pool[j] for j in chosen])


def _masks(plan: JobPlan) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(N, K) candidate mask, and the hold-out's (M, K) mask (its given set and its audited tag) and (M,) target
    classes."""
    try:
        mask = candidates_to_mask(plan.candidates, plan.classes)  # (N, K) bool
        if not plan.holdout:
            return mask, None, None
        hold_sets = [sorted({*plan.original[i], plan.classes[plan.audited[i]]}) for i in plan.holdout]
        hold_mask = candidates_to_mask(hold_sets, plan.classes)
    except ValueError as exc:
        raise InvalidCandidates(str(exc)) from exc
    hold_target = torch.tensor([plan.audited[i] for i in plan.holdout], dtype=torch.long)
    return mask, hold_mask, hold_target


# --- what a run tells its caller -------------------------------------------------------------------------------------


def _ignore(*_args, **_kwargs) -> None:
    return None


@dataclasses.dataclass
class Callbacks:
    """How a job reports and is stopped; none of them does the job's work. ``stage(name, data)`` opens a stage and
    ``progress(stage, done)`` reports 0..1 within it; ``checkpoint_written(metrics)`` after each epoch, once its
    checkpoint is on disk (the caller may store it); ``checkpoint_discarded(detail)`` when a stale checkpoint was
    dropped; ``should_cancel()`` is polled between batches and steps."""

    stage: Callable[[str, dict], None] = _ignore
    progress: Callable[[str, float], None] = _ignore
    checkpoint_written: Callable[[EpochMetrics], None] = _ignore
    checkpoint_discarded: Callable[[str], None] = _ignore
    should_cancel: Callable[[], bool] = lambda: False


# --- 2. the features ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PlanFeatures:
    train: torch.Tensor  # (V, n_train, D): every view of each training item
    eval: torch.Tensor  # (N, D): the clean view of every item


def encode_plan(
    backbone: Backbone,
    plan: JobPlan,
    images: Sequence[str | Path],
    cache,
    callbacks: Callbacks | None = None,
    *,
    batch_size: int = 64,
    decode_workers: int = 0,
) -> PlanFeatures:
    """The plan's features from ``cache``; what is missing is encoded here from ``images`` (one readable file per
    item), ``batch_size`` images per model call and ``decode_workers`` threads decoding ahead of it
    (``ml.features.encode_images``). One pass when every item trains."""
    cb = callbacks or Callbacks()
    n, views, train_idx = len(images), plan.views, plan.train_idx
    all_train = len(train_idx) == n
    total = n * (views if all_train else 1) + (0 if all_train else len(train_idx) * views)
    done_before = 0

    def on_encode(done: int, _n: int) -> None:
        cb.progress("encoding", (done_before + done) / max(total, 1))

    common = dict(
        cache=cache,
        seed=plan.seed,
        batch_size=batch_size,
        decode_workers=decode_workers,
        should_cancel=cb.should_cancel,
        on_progress=on_encode,
    )
    if all_train:
        feats = encode_images(backbone, list(images), shas=plan.shas, views=views, **common)
        train_feats, eval_feats = feats, feats[0]
    else:
        sub = [images[i] for i in train_idx]
        train_feats = encode_images(backbone, sub, shas=[plan.shas[i] for i in train_idx], views=views, **common)
        done_before = len(train_idx) * views
        eval_feats = encode_images(backbone, list(images), shas=plan.shas, views=1, **common)[0]
    cb.progress("encoding", 1.0)
    return PlanFeatures(train_feats, eval_feats)


# --- 3. the run --------------------------------------------------------------------------------------------------


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


def run_plan(
    backbone: Backbone,
    plan: JobPlan,
    feats: PlanFeatures,
    *,
    device: str,
    checkpoint_path: Path,
    export_dir: Path,
    callbacks: Callbacks | None = None,
) -> JobResult:
    """Train on the plan's features, label every item and export the head (see the module docstring, step 3).

    Raises ``TrainingCancelled`` on a cancel."""
    cb = callbacks or Callbacks()
    cfg, job = plan.config.train, plan.config
    mask, hold_mask, hold_target = _masks(plan)
    train_mask = mask[torch.tensor(plan.train_idx, dtype=torch.long)]
    knn = None
    if job.knn_vote:
        train_mask, knn = _prune(feats.train[0], train_mask, int(job.knn_k), float(job.knn_tau))

    cb.stage(
        "training",
        {
            "epochs": cfg.epochs,
            "method": cfg.method,
            "loss": cfg.loss,
            "resumed": checkpoint_path.exists(),
            "holdout_items": len(plan.holdout),
        },
    )
    val = (feats.eval[plan.holdout], hold_target, hold_mask) if plan.holdout else None
    started = time.perf_counter()
    result = _fit(backbone, feats.train, train_mask, plan.classes, cfg, checkpoint_path, device, cb, val)
    train_seconds = time.perf_counter() - started
    if cb.should_cancel():
        raise TrainingCancelled("cancel requested")

    deployed = deployed_classifier(backbone, result, plan.classes, job.handcrafted_mix, job.templates)
    cb.stage("labelling", {"items": len(plan.shas)})
    labelled = _label(plan, feats.eval, deployed, mask, hold_mask, hold_target, result.history)
    if cb.should_cancel():
        raise TrainingCancelled("cancel requested")

    cb.stage("exporting", {})
    t = labelled["temperature"]
    bias = None if deployed.bias is None else deployed.bias / t
    files = export_head(
        deployed.class_features,
        deployed.logit_scale / t,
        plan.classes,
        backbone.preprocess_cfg,
        export_dir,
        class_bias=bias,
    )
    return JobResult(
        labels=labelled["labels"],
        confidence=labelled["confidence"],
        margin=labelled["margin"],
        files={Path(p).name: Path(p) for p in files.values()},
        history=list(result.history),
        train_items=len(plan.train_idx),
        train_seconds=train_seconds,
        knn=knn,
        probs=labelled["probs"],
        quality=labelled["quality"],
    )


def _prune(feats: torch.Tensor, mask: torch.Tensor, k: int, tau: float) -> tuple[torch.Tensor, dict]:
    before = float(mask.sum(dim=1).float().mean())
    pruned = prune_candidates(feats, mask, k, tau)
    after = float(pruned.sum(dim=1).float().mean())
    return pruned, {"k": k, "tau": tau, "mean_set_before": round(before, 3), "mean_set_after": round(after, 3)}


def _fit(
    backbone, train_feats, train_mask, classes, cfg, checkpoint_path: Path, device: str, cb: Callbacks, val=None
) -> TrainResult:
    """``ml.train.fit``, resumed from ``checkpoint_path``; a checkpoint for other data or config is dropped once."""
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)

    def train() -> TrainResult:
        return fit(
            backbone,
            train_feats,
            train_mask,
            classes,
            cfg,
            val=val,
            on_epoch=cb.checkpoint_written,
            should_cancel=cb.should_cancel,
            checkpoint_path=checkpoint_path,
            device=device,
        )

    try:
        return train()
    except StaleCheckpoint as exc:
        if not checkpoint_path.is_file():
            raise
        checkpoint_path.unlink(missing_ok=True)
        cb.checkpoint_discarded(str(exc))
        return train()


def _label(plan: JobPlan, eval_feats, deployed, mask, hold_mask, hold_target, history) -> dict:
    """Calibrated labels, confidences, margins and candidate probabilities of every item, the temperature and the
    quality report (``ml.quality.assess``): an audited item is judged over its original set, as if its tag were
    unknown."""
    n, classes = len(plan.shas), plan.classes
    logits = class_logits(eval_feats, deployed.class_features, deployed.logit_scale, deployed.bias)
    judged = mask.clone()
    if plan.holdout:
        judged[torch.tensor(plan.holdout, dtype=torch.long)] = hold_mask
    audited = dict(zip(plan.holdout, hold_target.tolist(), strict=True)) if plan.holdout else {}
    a = assess(
        logits.cpu(),
        judged,
        classes=classes,
        certain=plan.certain,
        audited=audited,
        features=eval_feats.cpu(),
        history=history,
        seed=plan.seed,
    )
    p = a.probs
    probs = [{classes[k]: round(float(p[i, k]), 4) for k in range(len(classes)) if judged[i, k]} for i in range(n)]
    return {
        "labels": [int(x) for x in a.labels],
        "confidence": [float(x) for x in a.confidence],
        "margin": [float(x) for x in a.margin],
        "probs": probs,
        "quality": a.report,
        "temperature": a.temperature,
    }
