"""One training job, end to end: claim it, load rows by id, call ``ml/``, save labels, the model and artifacts.

:func:`run_train_job` is what the Celery task ``tagsift.train`` calls. It holds no ML logic (that is ``ml/``) and
no SQL beyond loading and saving rows. Its steps, each a stage in ``Job.progress`` and a ``JobEvent``:

1. **claim** (``worker.leases.claim_job``): only one runner ever works on a job; a duplicate message, a finished
   job or a job leased by a live runner returns quietly.
2. **loading_backbone**: ``worker.runtime.get_backbone`` (cached per process; device chosen here, in the child).
3. **encoding**: ``ml.features.encode_images`` through the on-disk ``FeatureCache`` at ``<data_dir>/features``
   (a re-run encodes nothing).
4. **training**: ``ml.train.fit`` with ``checkpoint_path=<data_dir>/jobs/<job_id>/ckpt.pt``, so a re-run after a
   lost worker resumes from the last finished epoch; one ``epoch`` event per epoch. A checkpoint that no longer
   matches (items added between attempts, other params) is deleted with a ``checkpoint`` event, and training
   restarts from epoch 1.
5. **labelling**: ``ml.train.disambiguate`` on the view-0 features of *every* item, restricted to its candidates.
6. **exporting**: ``ml.export.export_classifier`` plus a model card, each file put into the BlobStore.
7. **save**, one transaction fenced on our lease: items (never those a reviewer labelled), the ``Model`` row (one
   per job: ``job_id`` is unique) and the job ``succeeded`` with its metrics.

Training set rules: an item with a reviewer label (``label_source == "reviewer"``) or a manifest ``given_label`` is
certain, its candidate set becomes ``{label}``. Job param ``shots`` keeps at most that many training items per
class: items are visited in a seeded random order (certain ones first) and each is counted for the candidate class
that has the fewest items so far, and skipped when all its candidates are full. Labels are still written for every
item.

Database outages: every write of a run (the claim, progress, events, the final save) is one transaction retried
while the database is unreachable, for up to the job's lease (``worker.leases.retry_db``): a restart of PostgreSQL
shorter than the lease only pauses the run. A longer outage stops the run without writing (outcome
``db_unavailable``); its lease expires and the reaper re-runs the job from its last checkpoint. A database error never
fails a job.

Errors end the job, never a Celery retry loop: ``BackboneLoadError`` -> failed ``backbone_unavailable`` (ml's
message says how to fix it); invalid candidate sets -> failed ``invalid_input``; ``TrainingCancelled`` after a user's
cancel -> cancelled; anything else -> failed ``internal_error`` with the exception's summary. A run whose lease was
taken over stops without writing anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import bindparam, or_, select, update

from app.config import REFERENCE_BACKBONE, get_settings
from app.db import session_scope
from app.models import Dataset, Item, Job, Model, new_id
from app.storage import get_storage
from worker import runtime
from worker.leases import (
    Claim,
    ClaimOutcome,
    DatabaseUnavailable,
    Heartbeat,
    add_event,
    claim_job,
    is_transient_db_error,
    new_runner_id,
    retry_db,
    utcnow,
)

log = logging.getLogger(__name__)

#: (start, end) of each stage on the job's 0..1 progress bar.
STAGES: dict[str, tuple[float, float]] = {
    "loading_backbone": (0.0, 0.05),
    "encoding": (0.05, 0.35),
    "training": (0.35, 0.9),
    "labelling": (0.9, 0.95),
    "exporting": (0.95, 1.0),
}

#: Job params that are not TrainConfig fields.
RUN_PARAMS = ("shots", "views")

#: The JobEvent reason recorded when a previous attempt's checkpoint cannot be resumed.
STALE_CHECKPOINT_REASON = "checkpoint no longer matches the dataset; training restarts from epoch 1"


def is_stale_checkpoint_error(exc: BaseException) -> bool:
    """True for ``ml.train.fit``'s ValueError about a checkpoint written for other data or another config."""
    text = str(exc)
    return isinstance(exc, ValueError) and text.startswith("checkpoint ") and "different data or config" in text


class LeaseLost(Exception):
    """Another runner owns the job now (we stalled past our lease); stop without writing."""


class JobInputError(ValueError):
    """The job's rows cannot be trained on (no dataset, no items, bad candidate sets)."""


@dataclasses.dataclass
class ItemRow:
    id: str
    file: str
    sha256: str
    candidates: list[str]
    certain_label: str | None  # reviewer label or manifest label: the item's candidate set is {this}
    reviewer: bool  # a reviewer labelled it: never overwritten


@dataclasses.dataclass
class JobInput:
    job_id: str
    owner_id: str
    dataset_id: str
    params: dict
    classes: list[str]
    prompt_template: str | None
    items: list[ItemRow]


class JobRun:
    """Progress writes of one claimed run, each fenced on our lease (a stale runner cannot write) and retried through
    a database outage for up to ``patience`` seconds (the lease)."""

    def __init__(self, job_id: str, runner: str, heartbeat: Heartbeat, patience: float = 0.0) -> None:
        self.job_id = job_id
        self.runner = runner
        self.heartbeat = heartbeat
        self.patience = patience
        self.progress: dict = {"stage": "claimed", "epoch": 0, "epochs": 0, "fraction": 0.0}
        self._last_write = 0.0

    def _fenced_update(self, session, **values) -> None:
        res = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.lease_owner == self.runner, Job.status == "running")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            self.heartbeat.lost = True
            raise LeaseLost(self.job_id)

    def transaction(self, what: str, fn):
        """``fn()`` (one whole transaction), retried while the database is unreachable (see the module docstring)."""
        return retry_db(fn, what=f"job {self.job_id}: {what}", patience=self.patience)

    def write(self, event: tuple[str, dict] | None = None, **progress) -> None:
        self.progress = {**self.progress, **progress}

        def write_once() -> None:
            with session_scope() as session:
                self._fenced_update(session, progress=dict(self.progress))
                if event is not None:
                    add_event(session, self.job_id, event[0], **event[1])

        self.transaction(event[0] if event else "progress", write_once)
        self._last_write = time.monotonic()

    def stage(self, name: str, **data) -> None:
        log.info("job %s: %s", self.job_id, name)
        self.write(("stage", {"stage": name, **data}), stage=name, fraction=STAGES[name][0])

    def within(self, stage: str, done: float, *, throttle: float = 1.0) -> None:
        """Progress inside ``stage`` (0..1), written at most every ``throttle`` seconds (and at the end)."""
        if done < 1.0 and time.monotonic() - self._last_write < throttle:
            return
        lo, hi = STAGES[stage]
        fraction = round(lo + (hi - lo) * min(max(done, 0.0), 1.0), 4)
        if self.progress.get("stage") == stage:  # never move the bar back within a stage
            fraction = max(fraction, float(self.progress.get("fraction") or 0.0))
        self.write(fraction=fraction)


# --- loading ----------------------------------------------------------------------------------------------------------


def load_input(job_id: str) -> JobInput:
    with session_scope() as session:
        job = session.get(Job, job_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise JobInputError("the job's dataset no longer exists")
        classes = list(dataset.classes)
        known = set(classes)
        items = []
        rows = session.execute(
            select(Item.id, Item.file, Item.sha256, Item.candidates, Item.given_label, Item.label, Item.label_source)
            .where(Item.dataset_id == dataset.id)
            .order_by(Item.seq)
        ).all()
        for row in rows:
            reviewer = row.label_source == "reviewer" and row.label in known
            certain = row.label if reviewer else (row.given_label if row.given_label in known else None)
            items.append(ItemRow(row.id, row.file, row.sha256, list(row.candidates), certain, reviewer))
        if not items:
            raise JobInputError(f"dataset {dataset.id} has no items to train on")
        params = dict(job.params or {})
        return JobInput(job.id, job.owner_id, dataset.id, params, classes, dataset.prompt_template, items)


def train_config(params: dict, prompt_template: str | None):
    """``ml.train.TrainConfig`` from the job params (unknown keys were rejected by the API; extra ones ignored)."""
    from ml.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in params.items() if k in fields and v is not None}
    if "templates" in kwargs:
        kwargs["templates"] = tuple(kwargs["templates"])
    elif prompt_template:
        kwargs["templates"] = (prompt_template,)
    return TrainConfig(**kwargs)


def select_training_items(candidates: list[list[str]], certain: list[bool], shots: int | None, seed: int) -> list[int]:
    """Indices of the items to train on: all of them, or at most ``shots`` per class (see the module docstring)."""
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


# --- the job ----------------------------------------------------------------------------------------------------------


def run_train_job(job_id: str) -> str:
    """Run training job ``job_id`` if it is ours to run; returns the final outcome (for logs and tests)."""
    settings = get_settings()
    runner = new_runner_id()
    claim = retry_db(
        lambda: claim_job(job_id, runner=runner, lease_seconds=settings.job_lease_seconds),
        what=f"job {job_id}: claim",
        patience=settings.job_lease_seconds,
    )
    if claim.outcome is not ClaimOutcome.CLAIMED:
        log.info("job %s: not run (%s)", job_id, claim.outcome.value)
        return claim.outcome.value
    heartbeat = Heartbeat(
        job_id,
        runner=runner,
        lease_seconds=settings.job_lease_seconds,
        beat_seconds=settings.job_heartbeat_seconds,
        poll_seconds=settings.job_cancel_poll_seconds,
    )
    with heartbeat:
        run = JobRun(job_id, runner, heartbeat, patience=settings.job_lease_seconds)
        return _run_claimed(claim, run)


def _run_claimed(claim: Claim, run: JobRun) -> str:
    from ml.backbone import BackboneLoadError
    from ml.train import TrainingCancelled

    settings = get_settings()
    ckpt_dir = settings.data_dir / "jobs" / claim.job_id
    try:
        outcome = _train(claim, run, ckpt_dir)
    except LeaseLost:
        log.warning("job %s: lease lost, this run (%s) stops without writing", claim.job_id, run.runner)
        return "lease_lost"
    except TrainingCancelled:
        if run.heartbeat.lost:
            log.warning("job %s: lease lost, this run (%s) stops without writing", claim.job_id, run.runner)
            return "lease_lost"
        outcome = _finish(run, "cancelled", event=("stage", {"stage": "cancelled", "reason": "cancel requested"}))
    except BackboneLoadError as exc:
        outcome = _finish(run, "failed", code="backbone_unavailable", message=str(exc))
    except JobInputError as exc:
        outcome = _finish(run, "failed", code="invalid_input", message=str(exc))
    except DatabaseUnavailable as exc:
        outcome = _database_gone(run, exc)
    except Exception as exc:  # the job records it; a Celery retry would only repeat it
        if is_transient_db_error(exc):  # a database outage is not the job's fault: never fail it for one
            return _database_gone(run, exc)
        log.exception("job %s failed", claim.job_id)
        outcome = _finish(run, "failed", code="internal_error", message=f"{type(exc).__name__}: {exc}"[:4000])
    if outcome in ("succeeded", "failed", "cancelled"):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return outcome


def _database_gone(run: JobRun, exc: BaseException) -> str:
    """The database stayed away longer than the run waits: stop without writing; the reaper re-runs the job."""
    log.error(
        "job %s: %s; this run (%s) stops, the job is re-run from its last checkpoint once its lease expires",
        run.job_id,
        exc,
        run.runner,
    )
    return "db_unavailable"


def _finish(run: JobRun, status: str, *, code: str | None = None, message: str | None = None, event=None) -> str:
    def finish_once() -> None:
        with session_scope() as session:
            run._fenced_update(
                session,
                status=status,
                error_code=code,
                error_message=message,
                finished_at=utcnow(),
                lease_expires_at=None,
                progress={**run.progress, "stage": status},
            )
            if code:
                add_event(session, run.job_id, "error", code=code, message=message)
            if event:
                add_event(session, run.job_id, event[0], **event[1])

    try:
        run.transaction(status, finish_once)
    except LeaseLost:
        return "lease_lost"
    except DatabaseUnavailable as exc:
        return _database_gone(run, exc)
    log.info("job %s: %s%s", run.job_id, status, f" ({code}: {message})" if code else "")
    return status


def _train(claim: Claim, run: JobRun, ckpt_dir: Path) -> str:
    import torch

    from ml.ensemble import deployed_classifier
    from ml.export import export_classifier
    from ml.features import FeatureCache, encode_images
    from ml.knn_vote import prune_candidates
    from ml.train import TrainingCancelled, candidates_to_mask, disambiguate, fit

    settings = get_settings()
    storage = get_storage()
    job = run.transaction("load", lambda: load_input(claim.job_id))
    params = job.params
    cfg = train_config(params, job.prompt_template)
    views = int(params.get("views") or settings.train_views)

    # --- backbone (device picked here, inside the process that runs the task) ---
    run.stage("loading_backbone", backbone=settings.backbone, attempt=claim.attempt)
    device = runtime.pick_device(settings.device)
    backbone = runtime.get_backbone(settings.backbone, device=device, cache_dir=settings.model_cache_dir)

    # --- candidate sets ---
    candidates = [[it.certain_label] if it.certain_label else it.candidates for it in job.items]
    try:
        mask = candidates_to_mask(candidates, job.classes)  # (N, K) bool
    except ValueError as exc:
        raise JobInputError(f"invalid candidate sets: {exc}") from exc
    certain = [it.certain_label is not None for it in job.items]
    train_idx = select_training_items(candidates, certain, params.get("shots"), cfg.seed)

    # --- features (cached on disk by backbone id + image sha + view) ---
    run.stage("encoding", items=len(job.items), train_items=len(train_idx), views=views, device=device)
    cache = FeatureCache(settings.data_dir / "features")
    paths = [storage.local_path(it.sha256) for it in job.items]
    shas = [it.sha256 for it in job.items]
    all_train = len(train_idx) == len(job.items)
    total = len(job.items) * (views if all_train else 1) + (0 if all_train else len(train_idx) * views)
    done_before = 0

    def on_encode(done: int, n: int) -> None:
        run.within("encoding", (done_before + done) / max(total, 1))

    common = dict(cache=cache, seed=cfg.seed, should_cancel=run.heartbeat.should_stop, on_progress=on_encode)
    if all_train:
        feats = encode_images(backbone, paths, shas=shas, views=views, **common)  # (V, N, D)
        train_feats = feats
        eval_feats = feats[0]  # (N, D)
    else:
        sub = [paths[i] for i in train_idx]
        train_feats = encode_images(backbone, sub, shas=[shas[i] for i in train_idx], views=views, **common)
        done_before = len(train_idx) * views
        eval_feats = encode_images(backbone, paths, shas=shas, views=1, **common)[0]  # (N, D)
    run.within("encoding", 1.0)

    # --- training (resumes from the checkpoint of a previous attempt) ---
    run.stage("training", epochs=cfg.epochs, method=cfg.method, loss=cfg.loss, resumed=(ckpt_dir / "ckpt.pt").exists())
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = STAGES["training"]

    def on_epoch(m) -> None:
        data = {k: v for k, v in dataclasses.asdict(m).items() if v is not None}
        run.write(
            ("epoch", data),
            epoch=m.epoch,
            epochs=m.epochs,
            fraction=round(lo + (hi - lo) * m.epoch / max(m.epochs, 1), 4),
        )

    train_idx_t = torch.tensor(train_idx, dtype=torch.long)
    train_mask = mask[train_idx_t]
    knn = None
    if params.get("knn_vote"):  # prune the training candidate sets by neighbour voting (ml/knn_vote.py)
        before = float(train_mask.sum(dim=1).float().mean())
        train_mask = prune_candidates(train_feats[0], train_mask, int(params["knn_k"]), float(params["knn_tau"]))
        knn = {
            "k": int(params["knn_k"]),
            "tau": float(params["knn_tau"]),
            "mean_set_before": round(before, 3),
            "mean_set_after": round(float(train_mask.sum(dim=1).float().mean()), 3),
        }
    ckpt_path = ckpt_dir / "ckpt.pt"

    def train():
        return fit(
            backbone,
            train_feats,
            train_mask,
            job.classes,
            cfg,
            on_epoch=on_epoch,
            should_cancel=run.heartbeat.should_stop,
            checkpoint_path=ckpt_path,
            device=device,
        )

    started = time.perf_counter()
    try:
        result = train()
    except ValueError as exc:
        if not (ckpt_path.is_file() and is_stale_checkpoint_error(exc)):
            raise
        # items added between attempts, or different params: the previous attempt's epochs are not reusable
        log.warning("job %s: %s; training restarts from epoch 1", claim.job_id, exc)
        ckpt_path.unlink(missing_ok=True)
        run.write(
            ("checkpoint", {"action": "discarded", "reason": STALE_CHECKPOINT_REASON, "detail": str(exc)[:500]}),
            epoch=0,
            fraction=lo,
        )
        result = train()
    train_seconds = time.perf_counter() - started
    if run.heartbeat.should_stop():
        raise TrainingCancelled("cancel requested")

    # --- the deployed classifier: trained, or mixed with the handcrafted one (ml/ensemble.py) ---
    beta = float(params.get("handcrafted_mix") or 0.0)
    deployed = deployed_classifier(backbone, result, job.classes, beta, params.get("templates"))
    class_features, logit_scale, class_bias = deployed.class_features, deployed.logit_scale, deployed.bias

    # --- labels for every item (restricted to its own, unpruned candidates) ---
    run.stage("labelling", items=len(job.items))
    labels, confidence, margin = disambiguate(eval_feats, class_features, logit_scale, candidates=mask, bias=class_bias)
    rows = []
    for i, it in enumerate(job.items):
        if it.reviewer:
            continue
        rows.append(
            {
                "_id": it.id,
                "label": job.classes[int(labels[i])],
                "confidence": float(confidence[i]),
                "margin": float(margin[i]),
                "needs_review": bool(float(margin[i]) < settings.review_margin),
            }
        )
    history = result.history
    metrics = {
        "backbone": settings.backbone,
        "backbone_id": backbone.id,
        "device": device,
        "method": cfg.method,
        "loss": cfg.loss,
        "epochs": cfg.epochs,
        "final_loss": history[-1].loss if history else None,
        "train_acc": history[-1].train_acc if history else None,
        "train_seconds": round(train_seconds, 3),
        "items": len(job.items),
        "train_items": len(train_idx),
        "certain_items": sum(certain),
        "labelled_items": len(rows),
        "needs_review": sum(r["needs_review"] for r in rows),
        "mean_confidence": round(sum(r["confidence"] for r in rows) / len(rows), 4) if rows else None,
        "mean_margin": round(sum(r["margin"] for r in rows) / len(rows), 4) if rows else None,
        "attempt": claim.attempt,
        "knn_vote": knn,
        "handcrafted_mix": beta,
    }
    if run.heartbeat.should_stop():
        raise TrainingCancelled("cancel requested")

    # --- artifacts (content-addressed, so a re-run stores nothing twice) ---
    run.stage("exporting")
    model_id = new_id()
    artifacts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tagsift-export-") as tmp:
        files = export_classifier(backbone, class_features, logit_scale, job.classes, tmp, class_bias=class_bias)
        for path in files.values():
            artifacts[Path(path).name] = storage.put(Path(path).read_bytes())  # model.onnx, classes.json, ...
    artifacts["model_card.md"] = storage.put(model_card(job, cfg, metrics, model_id).encode())

    # --- save: one transaction, fenced on our lease ---
    now = utcnow()
    progress = {**run.progress, "stage": "succeeded", "epoch": cfg.epochs, "epochs": cfg.epochs, "fraction": 1.0}

    def save_once() -> None:
        with session_scope() as session:
            run._fenced_update(
                session,
                status="succeeded",
                model_id=model_id,
                metrics=metrics,
                progress=progress,
                finished_at=now,
                lease_expires_at=None,
            )
            session.add(
                Model(
                    id=model_id,
                    owner_id=job.owner_id,
                    dataset_id=job.dataset_id,
                    job_id=job.job_id,
                    backbone=backbone.id,
                    method=cfg.method,
                    classes=job.classes,
                    metrics=metrics,
                    artifacts=artifacts,
                )
            )
            session.flush()
            if rows:
                items = Item.__table__
                stmt = (
                    update(items)
                    .where(items.c.id == bindparam("_id"))
                    .where(or_(items.c.label_source.is_(None), items.c.label_source != "reviewer"))
                    .values(
                        label=bindparam("label"),
                        confidence=bindparam("confidence"),
                        margin=bindparam("margin"),
                        needs_review=bindparam("needs_review"),
                        label_source="model",
                        model_id=model_id,
                        updated_at=now,
                    )
                )
                session.connection().execute(stmt, rows)
            add_event(session, job.job_id, "stage", stage="succeeded", model_id=model_id)

    try:
        run.transaction("save", save_once)
    except LeaseLost:
        if not _saved(job.job_id, model_id):  # a retried save whose first commit went through but was not answered
            raise
    run.progress = progress
    log.info("job %s: succeeded, model %s", job.job_id, model_id)
    return "succeeded"


def _saved(job_id: str, model_id: str) -> bool:
    with session_scope() as session:
        job = session.get(Job, job_id)
        return job is not None and job.status == "succeeded" and job.model_id == model_id


def model_card(job: JobInput, cfg, metrics: dict, model_id: str) -> str:
    """A short Markdown model card stored next to the ONNX classifier."""
    reference = get_settings().backbone.strip() == REFERENCE_BACKBONE
    caveat = (
        "**Caveat:** this model uses the offline *reference* backbone (EfficientNet-Lite0 image tower + MiniLM text "
        "tower aligned on a small corpus). It is **not CLIP**: expect much lower accuracy than an open_clip "
        "backbone such as ViT-B-32/laion2b; use it for offline tests and demos."
        if reference
        else "The backbone is frozen; only the prompt context (or probe) was trained on this dataset."
    )
    shown = {k: v for k, v in metrics.items() if v is not None}
    lines = [
        f"# Model {model_id}",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"- Job: {job.job_id}; dataset: {job.dataset_id}",
        f"- Backbone: `{metrics['backbone']}` (id `{metrics['backbone_id']}`)",
        f"- Method: {cfg.method}; loss: {cfg.loss}; epochs: {cfg.epochs}; batch size: {cfg.batch_size}; "
        f"lr: {cfg.lr}; n_ctx: {cfg.n_ctx}; seed: {cfg.seed}",
        f"- Classes ({len(job.classes)}): {', '.join(job.classes[:50])}{' ...' if len(job.classes) > 50 else ''}",
        "",
        "## Metrics",
        "",
        "```json",
        json.dumps(shown, indent=2, sort_keys=True),
        "```",
        "",
        "## Intended use",
        "",
        "Disambiguating candidate tag sets of images like the ones it was tuned on (weakly supervised "
        "partial-label learning with prompt alignment, arXiv 2407.07638), and tagging new images of the same "
        "classes. Labels come with a confidence and a margin over the runner-up candidate; items with a small "
        "margin are flagged for review. It was trained without ground truth, so audit a sample before relying "
        "on it, and do not use it for decisions about people.",
        "",
        caveat,
        "",
        "Files: `model.onnx` (input `image`: float32 (B, 3, S, S) preprocessed as in `preprocess.json`; output "
        "`logits`: (B, K) in the order of `classes.json`).",
        "",
    ]
    return "\n".join(lines)
