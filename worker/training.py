"""One training job, end to end: claim it, load rows by id, call ``ml/``, save labels, the model and artifacts.

:func:`run_train_job` is what the Celery task ``tagsift.train`` calls. It holds no ML logic (that is ``ml/``) and
no SQL beyond loading and saving rows. Its steps, each a stage in ``Job.progress`` and a ``JobEvent``:

1. **claim** (``worker.leases.claim_job``): only one runner ever works on a job; a duplicate message, a finished
   job or a job leased by a live runner returns quietly.
2. **loading_backbone**: ``worker.runtime.get_backbone`` (cached per process; device chosen here, in the child).
3. **plan**: ``ml.pipeline.job_config`` builds the job's config from its params (here and nowhere else) and
   ``ml.pipeline.plan_job`` makes every ML decision that comes before the features (hold-out, shots, views) as plain
   data, a ``JobPlan`` that names the features it needs.
4. **encoding**: the job's files come to this machine through ``worker.job_files`` (images, the stored epoch
   checkpoint at ``jobs/<job_id>/ckpt.pt`` so a re-run, here or on another machine, resumes, and the stored
   features); the features the store lacks are encoded in shards by every free worker of the job's queue and this
   one (``worker.shards``), then ``ml.pipeline.encode_plan`` reads them from the cache (encoding whatever is still
   missing), and this module waits until every new feature is in the store.
5. **training**, **labelling**, **exporting**: ``ml.pipeline.run_plan`` on those features (kNN pruning, fit, the
   handcrafted mix, calibration, labels, the head's export); its callbacks only report: progress and stages, cancel,
   and "checkpoint written" after each epoch, where this module stores the checkpoint and writes the ``epoch``
   event (a ``checkpoint`` event when a stale checkpoint is dropped).
6. **store**: the model's head, side files and a model card (``worker.model_card``) into the BlobStore, with the
   backbone's image tower only when its content address is not stored yet (``worker.model_store``).
7. **save**, one transaction fenced on our lease: items (never those a reviewer labelled), the ``Model`` row (one
   per job: ``job_id`` is unique) and the job ``succeeded`` with its metrics.

Rows (``worker.job_rows``): an item with a reviewer label (``label_source == "reviewer"``) or a manifest
``given_label`` is passed to ml as certain (what ml does with it: ``ml.pipeline``, step 1); labels are written for
every item but those a reviewer labelled. Progress writes are fenced on the lease (``worker.job_run``).

Database outages: every write of a run (the claim, progress, events, the final save) is one transaction retried
while the database is unreachable, for up to the job's lease (``worker.leases.retry_db``): a restart of PostgreSQL
shorter than the lease only pauses the run. A longer outage stops the run without writing (outcome
``db_unavailable``); its lease expires and the reaper re-runs the job from its last checkpoint. A database error never
fails a job.

Errors end the job, never a Celery retry loop: ``BackboneLoadError`` -> failed ``backbone_unavailable`` (ml's
message says how to fix it); invalid candidate sets -> failed ``invalid_input``; ``TrainingCancelled`` after a user's
cancel -> cancelled; an object store that stays unreachable (retried for up to the lease) -> failed
``storage_unavailable``, with no model stored; anything else -> failed ``internal_error`` with the exception's
summary. A run whose lease was taken over stops without writing anything.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

from sqlalchemy import select

from app import logs
from app.config import get_settings
from app.db import session_scope
from app.models import Job, new_id
from app.queue import enqueue_job, job_device
from app.storage import StorageError, get_storage
from ml.errors import BackboneLoadError, InvalidCandidates, TrainingCancelled
from ml.weights import WeightsMissing
from vocab import FINISHED_STATUSES, JobStatus
from worker import model_store, runtime
from worker.job_files import JobFiles, retry_storage
from worker.job_rows import JobInput, JobInputError, job_metrics, label_rows, load_input, save_result
from worker.job_run import STAGES, JobRun, LeaseLost
from worker.leases import (
    Claim,
    ClaimOutcome,
    DatabaseUnavailable,
    Heartbeat,
    claim_job,
    is_transient_db_error,
    new_runner_id,
    retry_db,
)
from worker.map_layout import store_layout
from worker.model_card import model_card
from worker.shard_rows import forget as forget_shards
from worker.shards import encode_job
from worker.weights import weights_remedy

log = logging.getLogger(__name__)


#: The JobEvent reason recorded when a previous attempt's checkpoint cannot be resumed.
STALE_CHECKPOINT_REASON = "checkpoint no longer matches the dataset; training restarts from epoch 1"


# --- the job ----------------------------------------------------------------------------------------------------------


def run_train_job(job_id: str) -> str:
    """Run training job ``job_id`` if it is ours to run; returns the final outcome (for logs and tests)."""
    job_token = logs.job_id.set(job_id)
    try:
        return _run_train_job(job_id)
    finally:
        logs.job_id.reset(job_token)


def _placement(job_id: str) -> tuple[str, str | None] | None:
    """(device, request id) of the job, or None when it does not exist."""
    with session_scope() as session:
        row = session.execute(select(Job.params, Job.request_id).where(Job.id == job_id)).one_or_none()
    return None if row is None else (job_device(row[0]), row[1])


def _run_train_job(job_id: str) -> str:
    settings = get_settings()
    placement = retry_db(lambda: _placement(job_id), what=f"job {job_id}: read", patience=settings.job_lease_seconds)
    if placement is None:
        log.info("job %s: not run (missing)", job_id)
        return "missing"
    device, request_id = placement
    rid_token = logs.request_id.set(request_id)
    try:
        kind = runtime.worker_kind(settings.device)
        if not runtime.takes(kind, device):
            # Only a message sent to the wrong queue (by hand, or by an older tagsift) gets here: never run it, send
            # it on to its own queue.
            log.warning("job %s asks for a %s worker; this is a %s worker: sent on to its queue", job_id, device, kind)
            enqueue_job(job_id, device)
            return "misrouted"
        return _claim_and_run(job_id, settings)
    finally:
        logs.request_id.reset(rid_token)


def _claim_and_run(job_id: str, settings) -> str:
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
    settings = get_settings()
    files = JobFiles(get_storage(), claim.job_id, patience=settings.job_lease_seconds)
    try:
        outcome = _train(claim, run, files)
    except LeaseLost:
        log.warning("job %s: lease lost, this run (%s) stops without writing", claim.job_id, run.runner)
        return "lease_lost"
    except TrainingCancelled:
        if run.heartbeat.lost:
            log.warning("job %s: lease lost, this run (%s) stops without writing", claim.job_id, run.runner)
            return "lease_lost"
        outcome = _finish(
            run, JobStatus.CANCELLED, event=("stage", {"stage": "cancelled", "reason": "cancel requested"})
        )
    except WeightsMissing as exc:
        outcome = _finish(run, JobStatus.FAILED, code="weights_missing", message=weights_remedy(exc))
    except BackboneLoadError as exc:
        outcome = _finish(run, JobStatus.FAILED, code="backbone_unavailable", message=str(exc))
    except JobInputError as exc:
        outcome = _finish(run, JobStatus.FAILED, code="invalid_input", message=str(exc))
    except StorageError as exc:  # retried already (worker.job_files.retry_storage): nothing half-stored
        outcome = _finish(run, JobStatus.FAILED, code="storage_unavailable", message=str(exc)[:4000])
    except DatabaseUnavailable as exc:
        outcome = _database_gone(run, exc)
    except Exception as exc:  # the job records it; a Celery retry would only repeat it
        if is_transient_db_error(exc):  # a database outage is not the job's fault: never fail it for one
            return _database_gone(run, exc)
        log.exception("job %s failed", claim.job_id)
        outcome = _finish(run, JobStatus.FAILED, code="internal_error", message=f"{type(exc).__name__}: {exc}"[:4000])
    finally:
        files.release()
    if outcome in FINISHED_STATUSES:
        files.remove()
        _forget_shards(claim.job_id)
    return outcome


def _forget_shards(job_id: str) -> None:
    """The job is over: its shard rows go (helpers still at work see it and stop)."""
    try:
        forget_shards(job_id)
    except Exception as exc:  # leftover rows are only clutter: a re-run replaces them, deleting the job drops them
        log.warning("job %s: could not remove its shard rows: %s", job_id, exc)


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
            errors = [("error", {"code": code, "message": message})] if code else []
            events = errors + ([event] if event else [])
            progress = {**run.progress, "stage": status}
            run.transition(
                session, JobStatus(status), events=events, error_code=code, error_message=message, progress=progress
            )

    try:
        run.transaction(status, finish_once)
    except LeaseLost:
        return "lease_lost"
    except DatabaseUnavailable as exc:
        return _database_gone(run, exc)
    log.info("job %s: %s%s", run.job_id, status, f" ({code}: {message})" if code else "")
    return status


def _train(claim: Claim, run: JobRun, files: JobFiles) -> str:
    """The job's path, in order: its rows -> ml plans -> the job's files here -> this worker and its helpers encode
    and store the features -> ml trains, labels and exports -> the model stored -> the rows saved."""
    from ml import pipeline  # torch loads in the task's process, not the parent

    settings = get_settings()
    job = run.transaction("load", lambda: load_input(claim.job_id))
    config = pipeline.job_config(job.params, job.prompt_template, default_views=settings.train_views)

    run.stage("loading_backbone", backbone=settings.backbone, attempt=claim.attempt)
    device = runtime.job_torch_device(settings.device)  # picked here, inside the process that runs the task
    backbone = runtime.get_backbone(
        settings.backbone, device=device, cache_dir=settings.model_cache_dir, offline=settings.offline
    )
    plan = _plan(job, config)
    callbacks = _callbacks(run, files)
    images = files.images(plan.shas)
    checkpoint = files.checkpoint()  # the store's latest epoch checkpoint, if any: ml resumes from it
    cache = files.feature_cache(backbone.id, plan.shas, plan.views, plan.seed)
    queue = job_device(job.params)  # the queue whose free workers help encode
    feats = encode_job(run, files, cache, backbone, plan, images, claim.attempt, device, queue, callbacks)
    layout = store_layout(files.storage, feats.eval, [it.id for it in job.items])  # the web app's similarity map

    model_id = new_id()
    with tempfile.TemporaryDirectory(prefix="tagsift-export-") as tmp:
        result = pipeline.run_plan(
            backbone, plan, feats, device=device, checkpoint_path=checkpoint, export_dir=Path(tmp), callbacks=callbacks
        )
        rows = label_rows(job, result, settings.review_confidence)
        metrics = job_metrics(job, plan, result, rows, backbone.id, device, claim.attempt)
        card = model_card(job, config.train, metrics, model_id).encode()
        metrics["layout"] = layout  # worker.map_layout: the web app's similarity map (None when not stored)

        def store_model() -> dict[str, str]:  # content-addressed: a retry or a re-run stores nothing twice
            return model_store.store_model(files.storage, backbone, result.files, card, Path(tmp) / "tower")

        # every file is stored before the Model row exists: an outage here leaves no half-written model
        artifacts = retry_storage(store_model, what=f"job {claim.job_id}: storing the model", patience=files.patience)
    return save_result(run, job, config.train, backbone.id, model_id, metrics, artifacts, rows)


def _plan(job: JobInput, config):
    """ml's plan of the job (hold-out, training items, the features they need: plain data) from its rows; an item
    with a certain label (a reviewer's or the manifest's) is passed as certain."""
    from ml import pipeline

    items = job.items
    candidates, tags = [it.candidates for it in items], [it.certain_label for it in items]
    try:
        return pipeline.plan_job(job.classes, candidates, tags, [it.sha256 for it in items], config, job.audited)
    except InvalidCandidates as exc:
        raise JobInputError(f"invalid candidate sets: {exc}") from exc


def _callbacks(run: JobRun, files: JobFiles):
    """ml's reports as progress writes and job events; the epoch's checkpoint is stored before the epoch is."""
    from ml.pipeline import Callbacks

    lo, hi = STAGES["training"]

    def checkpoint_written(m) -> None:
        failed = files.save_checkpoint()  # ml has just written this epoch's checkpoint
        data = {k: v for k, v in dataclasses.asdict(m).items() if v is not None}
        if failed:
            data["checkpoint_not_stored"] = failed
        fraction = round(lo + (hi - lo) * m.epoch / max(m.epochs, 1), 4)
        run.write(("epoch", data), epoch=m.epoch, epochs=m.epochs, fraction=fraction)

    def checkpoint_discarded(detail: str) -> None:
        # items added between attempts, or different params: the previous attempt's epochs are not reusable
        log.warning("job %s: %s; training restarts from epoch 1", run.job_id, detail)
        event = {"action": "discarded", "reason": STALE_CHECKPOINT_REASON, "detail": detail[:500]}
        run.write(("checkpoint", event), epoch=0, fraction=lo)

    return Callbacks(
        stage=lambda name, data: run.stage(name, **data),
        progress=lambda stage, done: run.within(stage, done),
        checkpoint_written=checkpoint_written,
        checkpoint_discarded=checkpoint_discarded,
        should_cancel=run.heartbeat.should_stop,
    )
