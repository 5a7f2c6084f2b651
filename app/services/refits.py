"""Live refits: every review decision schedules a refit of the dataset's latest model (docs/architecture.md, Live
refit). The refit itself runs on the worker (``worker.refit``); this module is its bookkeeping on the API's side.

- :func:`note_decision`: ``datasets.decision_seq += 1``, in the transaction of every decision, undo or outside
  decision (``app.services.reviews``), under the dataset's row lock.
- :func:`request_refit`: after such a transaction commits. Coalesced: at most one refit per dataset is queued or
  running; a decision made while one runs leaves it to that refit, which schedules exactly one more when it finds
  the sequence moved (``worker.refit``). A refit queued or running longer than ``refit_lost_seconds`` is taken as
  lost (its worker died) and replaced.
- :func:`live_state` (the review page's poll) and :func:`quality_series` (the estimate against the reviews).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.models import Dataset, Model, Refit, utcnow
from app.services.datasets import lock_dataset

log = logging.getLogger(__name__)

#: The Celery task of a refit (``worker.refit``), sent to ``settings.live_queue``.
REFIT_TASK = "tagsift.refit"
ACTIVE = ("queued", "running")


def note_decision(session: Session, dataset_id: str) -> None:
    """The dataset's decision sequence moves on (the caller holds the dataset's lock and commits)."""
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(decision_seq=Dataset.decision_seq + 1))


def latest_model(session: Session, dataset_id: str) -> Model | None:
    """The dataset's newest model (a job's or a refit's revision): the one a refit starts from."""
    return session.scalar(
        select(Model).where(Model.dataset_id == dataset_id).order_by(Model.created_at.desc(), Model.id.desc()).limit(1)
    )


def request_refit(session: Session, dataset_id: str, settings: Settings | None = None) -> Refit | None:
    """Schedule a refit of ``dataset_id`` after a committed decision: the new queued refit, or None when one is
    already queued or running (coalesced), the dataset has no model yet, or live refits are off."""
    settings = settings or get_settings()
    if not settings.live_refit:
        return None
    try:
        refit = _queue_one(session, dataset_id, settings)
    except (IntegrityError, OperationalError) as exc:  # two requests at once on SQLite (no row lock): one queues it
        session.rollback()
        log.warning("dataset %s: refit not queued here (%s); a concurrent decision queues it", dataset_id, exc)
        return None
    if refit is not None:
        from app.queue import enqueue  # Celery's client: only when there is something to send

        try:
            enqueue(REFIT_TASK, refit.id, queue=settings.live_queue)
        except Exception as exc:  # the decision is stored; the row stays queued, replaced once refit_lost_seconds pass
            log.error(
                "dataset %s: refit %d not sent to the broker (%s): a decision after TAGSIFT_REFIT_LOST_SECONDS"
                " replaces it",
                dataset_id,
                refit.revision,
                exc,
            )
            return refit
        log.info("dataset %s: refit %d queued (%s)", dataset_id, refit.revision, refit.id)
    return refit


def _queue_one(session: Session, dataset_id: str, settings: Settings) -> Refit | None:
    """The refit row, committed (None when there is nothing to queue)."""
    model = latest_model(session, dataset_id)
    if model is None:
        session.commit()  # ends the read (nothing written; objects stay loaded: expire_on_commit is off)
        return None
    lock_dataset(session, dataset_id)
    active = list(session.scalars(select(Refit).where(Refit.dataset_id == dataset_id, Refit.status.in_(ACTIVE))))
    lost_before = utcnow() - timedelta(seconds=settings.refit_lost_seconds)
    alive = False
    for refit in active:
        if (refit.started_at or refit.created_at) < lost_before:
            refit.status, refit.error_code, refit.finished_at = "failed", "lost", utcnow()
            refit.error = f"no worker finished it within {settings.refit_lost_seconds:.0f} s (its worker died?)"
        else:
            alive = True
    if alive:
        session.commit()
        return None
    revision = (session.scalar(select(func.max(Refit.revision)).where(Refit.dataset_id == dataset_id)) or 0) + 1
    refit = Refit(
        dataset_id=dataset_id, revision=revision, status="queued", base_model_id=model.id, created_at=utcnow()
    )
    session.add(refit)
    session.commit()
    return refit


def refit_read(refit: Refit | None) -> dict | None:
    if refit is None:
        return None
    return {
        "id": refit.id,
        "revision": refit.revision,
        "status": refit.status,
        "model_id": refit.model_id,
        "base_model_id": refit.base_model_id,
        "decision_seq": refit.decision_seq,
        "reviewed_items": refit.reviewed_items,
        "audited_items": refit.audited_items,
        "changed_items": refit.changed_items,
        "seconds": refit.seconds,
        "error_code": refit.error_code,
        "error": refit.error,
        "created_at": refit.created_at.isoformat() if refit.created_at else None,
        "finished_at": refit.finished_at.isoformat() if refit.finished_at else None,
    }


def list_refits(session: Session, dataset_id: str, limit: int = 50) -> list[Refit]:
    """The dataset's refits, newest first."""
    return list(
        session.scalars(
            select(Refit).where(Refit.dataset_id == dataset_id).order_by(Refit.revision.desc()).limit(limit)
        )
    )


def live_state(session: Session, dataset: Dataset) -> dict:
    """What the review page polls: the latest refit (and the latest that changed tags), the dataset's estimate and
    counts. Small and indexed: one dataset row and two refit rows."""
    latest = session.scalar(
        select(Refit).where(Refit.dataset_id == dataset.id).order_by(Refit.revision.desc()).limit(1)
    )
    done = session.scalar(
        select(Refit)
        .where(Refit.dataset_id == dataset.id, Refit.status == "succeeded")
        .order_by(Refit.revision.desc())
        .limit(1)
    )
    quality = dataset.quality or {}
    estimate = quality.get("estimate") or {}
    accuracy = estimate.get("accuracy", quality.get("estimated_accuracy"))
    return {
        "dataset_id": dataset.id,
        "decision_seq": dataset.decision_seq,
        "review_count": dataset.review_count,
        "item_count": dataset.item_count,
        "estimate": {"accuracy": accuracy, "ci95": estimate.get("ci95"), "basis": estimate.get("basis")},
        "refit": refit_read(latest),
        "applied": refit_read(done),
        "in_flight": latest is not None and latest.status in ACTIVE,
    }


def quality_series(session: Session, dataset_id: str) -> list[dict]:
    """The estimate against the number of reviews so far: one point per succeeded refit (oldest first)."""
    points = []
    for refit in reversed(list_refits(session, dataset_id, limit=500)):
        quality = refit.quality or {}
        if refit.status != "succeeded" or not quality:
            continue
        estimate = quality.get("estimate") or {}
        accuracy = estimate.get("accuracy", quality.get("estimated_accuracy"))
        if accuracy is None:
            continue
        lo, hi = estimate.get("ci95") or [accuracy, accuracy]
        points.append(
            {
                "reviews": int(refit.reviewed_items or 0),
                "accuracy": float(accuracy),
                "lo": float(lo),
                "hi": float(hi),
                "basis": str(estimate.get("basis") or "none"),
            }
        )
    return points


def item_states(session: Session, dataset_id: str, item_ids: list[str]) -> list[dict]:
    """The tags of ``item_ids`` (of this dataset only) as the review page shows them, with the refit that last
    changed each (``refit_revision``)."""
    from app.models import Item

    if not item_ids:
        return []
    rows = session.execute(
        select(
            Item.id, Item.label, Item.label_source, Item.confidence, Item.margin, Item.probs, Item.refit_revision
        ).where(Item.dataset_id == dataset_id, Item.id.in_(item_ids[:200]))
    ).all()
    return [
        {
            "id": r.id,
            "label": r.label,
            "label_source": r.label_source,
            "confidence": r.confidence,
            "margin": r.margin,
            "probs": r.probs,
            "refit_revision": r.refit_revision,
        }
        for r in rows
    ]
