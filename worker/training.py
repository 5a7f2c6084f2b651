"""One training job, end to end: claim it, load rows by id, call ``ml/``, save labels, the model and artifacts.

:func:`run_train_job` is what the Celery task ``tagsift.train`` calls. It holds no ML logic (that is ``ml/``) and
no SQL beyond loading and saving rows. Its steps, each a stage in ``Job.progress`` and a ``JobEvent``:

1. **claim** (``worker.leases.claim_job``): only one runner ever works on a job; a duplicate message, a finished
   job or a job leased by a live runner returns quietly.
2. **loading_backbone**: ``worker.runtime.get_backbone`` (cached per process; device chosen here, in the child).
3. **encoding**, **training**, **labelling**, **exporting**: ``ml.pipeline.run_job`` makes every ML decision (shots,
   views, kNN pruning, fit with a checkpoint at ``jobs/<job_id>/ckpt.pt`` in the blob store so a re-run, here or
   on another machine, resumes, the handcrafted mix, disambiguation, the head's export); this module turns its
   callbacks into progress and events (one ``epoch`` event per epoch, a ``checkpoint`` event when a stale checkpoint
   is dropped) and puts the model's head, side files and a model card (``worker.model_card``) into the BlobStore, with
   the backbone's image tower only when its content address is not stored yet (``worker.model_store``). Images,
   checkpoint and features reach ``ml`` as local files through ``worker.job_files`` (downloaded from an object
   store into this machine's bounded cache; the checkpoint and new features are uploaded as they are written). The
   encoding is split into shards that every free worker of the job's queue encodes with this one
   (``worker.shards``); training then reads the merged features from the feature cache.
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
from app.dbclock import db_now
from app.models import Job, new_id
from app.queue import job_device
from app.services.webhooks import emit_job_event
from app.storage import StorageError, get_storage
from ml.errors import BackboneLoadError, InvalidCandidates, TrainingCancelled
from ml.weights import WeightsMissing
from worker import model_store, runtime
from worker.job_files import JobFiles, retry_storage
from worker.job_rows import JobInput, JobInputError, label_rows, load_input, save_result
from worker.job_run import STAGES, JobRun, LeaseLost
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
)
from worker.map_layout import store_layout
from worker.model_card import model_card
from worker.shard_rows import forget as forget_shards
from worker.shards import Spread
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
            from worker.celery_app import enqueue_train

            log.warning("job %s asks for a %s worker; this is a %s worker: sent on to its queue", job_id, device, kind)
            enqueue_train(job_id, device)
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
        outcome = _finish(run, "cancelled", event=("stage", {"stage": "cancelled", "reason": "cancel requested"}))
    except WeightsMissing as exc:
        outcome = _finish(run, "failed", code="weights_missing", message=weights_remedy(exc))
    except BackboneLoadError as exc:
        outcome = _finish(run, "failed", code="backbone_unavailable", message=str(exc))
    except JobInputError as exc:
        outcome = _finish(run, "failed", code="invalid_input", message=str(exc))
    except StorageError as exc:  # retried already (worker.job_files.retry_storage): nothing half-stored
        outcome = _finish(run, "failed", code="storage_unavailable", message=str(exc)[:4000])
    except DatabaseUnavailable as exc:
        outcome = _database_gone(run, exc)
    except Exception as exc:  # the job records it; a Celery retry would only repeat it
        if is_transient_db_error(exc):  # a database outage is not the job's fault: never fail it for one
            return _database_gone(run, exc)
        log.exception("job %s failed", claim.job_id)
        outcome = _finish(run, "failed", code="internal_error", message=f"{type(exc).__name__}: {exc}"[:4000])
    finally:
        files.release()
    if outcome in ("succeeded", "failed", "cancelled"):
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
            run._fenced_update(
                session,
                status=status,
                error_code=code,
                error_message=message,
                finished_at=db_now(),
                lease_expires_at=None,
                progress={**run.progress, "stage": status},
            )
            if code:
                add_event(session, run.job_id, "error", code=code, message=message)
            if event:
                add_event(session, run.job_id, event[0], **event[1])
            emit_job_event(session, run.job_id, f"job.{status}")

    try:
        run.transaction(status, finish_once)
    except LeaseLost:
        return "lease_lost"
    except DatabaseUnavailable as exc:
        return _database_gone(run, exc)
    log.info("job %s: %s%s", run.job_id, status, f" ({code}: {message})" if code else "")
    return status


def _train(claim: Claim, run: JobRun, files: JobFiles) -> str:
    from ml.pipeline import JobSpec, run_job, train_config  # torch loads in the task's process, not the parent

    settings = get_settings()
    storage = get_storage()
    job = run.transaction("load", lambda: load_input(claim.job_id))
    params = job.params
    cfg = train_config(params, job.prompt_template)

    run.stage("loading_backbone", backbone=settings.backbone, attempt=claim.attempt)
    device = runtime.job_torch_device(settings.device)  # picked here, inside the process that runs the task
    backbone = runtime.get_backbone(
        settings.backbone, device=device, cache_dir=settings.model_cache_dir, offline=settings.offline
    )

    spec = JobSpec(
        classes=job.classes,
        candidates=[[it.certain_label] if it.certain_label else it.candidates for it in job.items],
        certain=[it.certain_label is not None for it in job.items],
        images=files.images([it.sha256 for it in job.items]),
        shas=[it.sha256 for it in job.items],
        config=cfg,
        views=int(params.get("views") or settings.train_views),
        shots=params.get("shots"),
        knn_vote=bool(params.get("knn_vote")),
        knn_k=params.get("knn_k"),
        knn_tau=params.get("knn_tau"),
        handcrafted_mix=float(params.get("handcrafted_mix") or 0.0),
        templates=params.get("templates"),
        original_candidates=[it.candidates for it in job.items],
    )
    model_id = new_id()
    cache = files.feature_cache(backbone.id, spec.shas, spec.views, cfg.seed)
    callbacks = _callbacks(run, files)
    callbacks.encode_elsewhere = Spread(  # the encoding in shards over every free worker (worker.shards)
        run,
        files,
        cache,
        backbone,
        paths=dict(zip(spec.shas, spec.images, strict=True)),
        attempt=claim.attempt,
        seed=cfg.seed,
        device=job_device(params),
    )
    with tempfile.TemporaryDirectory(prefix="tagsift-export-") as tmp:
        try:
            result = run_job(
                backbone,
                spec,
                device=device,
                cache=cache,
                checkpoint_path=files.checkpoint(),
                export_dir=Path(tmp),
                callbacks=callbacks,
                batch_size=settings.encode_batch_size,
                decode_workers=settings.decode_threads,
            )
            layout = store_layout(storage, cache, backbone.id, spec.shas, [it.id for it in job.items])  # the map
        except InvalidCandidates as exc:
            raise JobInputError(f"invalid candidate sets: {exc}") from exc
        finally:
            cache.close()
        rows = label_rows(job, result, settings.review_confidence)
        metrics = _metrics(job, cfg, spec, result, rows, backbone.id, device, claim.attempt)
        card = model_card(job, cfg, metrics, model_id).encode()
        metrics["layout"] = layout  # worker.map_layout: the web app's similarity map (None when not stored)

        def store_model() -> dict[str, str]:  # content-addressed: a retry or a re-run stores nothing twice
            return model_store.store_model(storage, backbone, result.files, card, Path(tmp) / "tower")

        # every file is stored before the Model row exists: an outage here leaves no half-written model
        artifacts = retry_storage(store_model, what=f"job {claim.job_id}: storing the model", patience=files.patience)
    return save_result(run, job, cfg, backbone.id, model_id, metrics, artifacts, rows)


def _callbacks(run: JobRun, files: JobFiles):
    from ml.pipeline import Callbacks

    """The pipeline's reports as progress writes and job events."""
    lo, hi = STAGES["training"]

    def on_epoch(m) -> None:
        # ml has just written this epoch's checkpoint: store it before the epoch is reported
        failed = files.save_checkpoint()
        data = {k: v for k, v in dataclasses.asdict(m).items() if v is not None}
        if failed:
            data["checkpoint_not_stored"] = failed
        fraction = round(lo + (hi - lo) * m.epoch / max(m.epochs, 1), 4)
        run.write(("epoch", data), epoch=m.epoch, epochs=m.epochs, fraction=fraction)

    def on_checkpoint_discarded(detail: str) -> None:
        # items added between attempts, or different params: the previous attempt's epochs are not reusable
        log.warning("job %s: %s; training restarts from epoch 1", run.job_id, detail)
        event = {"action": "discarded", "reason": STALE_CHECKPOINT_REASON, "detail": detail[:500]}
        run.write(("checkpoint", event), epoch=0, fraction=lo)

    def on_stage(name: str, data: dict) -> None:
        if name == "training":
            files.flush_features()
        run.stage(name, **data)

    return Callbacks(
        stage=on_stage,
        progress=lambda stage, done: run.within(stage, done),
        epoch=on_epoch,
        checkpoint_discarded=on_checkpoint_discarded,
        should_cancel=run.heartbeat.should_stop,
    )


def _metrics(job: JobInput, cfg, spec, result, rows: list[dict], backbone_id: str, device: str, attempt: int) -> dict:
    history = result.history
    return {
        "backbone": get_settings().backbone,
        "backbone_id": backbone_id,
        "device": device,
        "method": cfg.method,
        "loss": cfg.loss,
        "epochs": cfg.epochs,
        "final_loss": history[-1].loss if history else None,
        # the two terms of the final loss apart (its scale follows L_PLL's, so the sum is no progress measure)
        "final_pll_loss": history[-1].pll_loss if history else None,
        "final_align_loss": history[-1].align_loss if history else None,
        "train_seconds": round(result.train_seconds, 3),
        "items": len(job.items),
        "train_items": result.train_items,
        "certain_items": sum(spec.certain),
        "labelled_items": len(rows),
        "needs_review": sum(r["needs_review"] for r in rows),
        "mean_confidence": round(sum(r["confidence"] for r in rows) / len(rows), 4) if rows else None,
        "mean_margin": round(sum(r["margin"] for r in rows) / len(rows), 4) if rows else None,
        "attempt": attempt,
        "knn_vote": result.knn,
        "handcrafted_mix": spec.handcrafted_mix,
        # how good the labels are without true labels (ml/quality.py, docs/results.md "Quality report"); a job
        # has no true labels, so there is no train_acc: the held-out accuracy (quality.holdout) takes its place
        "quality": {**result.quality, "needs_review": sum(r["needs_review"] for r in rows)} if result.quality else None,
        "review_confidence": get_settings().review_confidence,
    }
