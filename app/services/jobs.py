"""Training jobs: create (idempotent), read, events, cooperative cancel.

The database row is the source of truth; the broker message only names the job id and is sent *after* the
commit. If the broker is down at that moment the job stays ``queued`` and the API still answers 202: the row
is durable, an ``error`` event (code ``broker_unavailable``) records the failed send, and the worker's reaper
re-enqueues queued jobs that have not started (the same path that heals a lost message). A client therefore
never has to retry a create, and retrying with the same ``Idempotency-Key`` returns this same job.

Idempotency (IETF Idempotency-Key draft): the key is scoped to the owner; the request fingerprint is the
sha256 of the dataset id and the full parameter set *after defaults*. Same key + same fingerprint -> the
original job (202, header ``Idempotent-Replayed: true``); same key + another fingerprint -> 422.

Cancel (AIP-151, best effort): a queued job becomes ``cancelled`` at once (a conditional UPDATE, so a worker
that just started it wins and the job is treated as running); a running job gets ``cancel_requested`` and the
worker stops at its next step, ending ``cancelled``; a finished job answers 409.
"""

from __future__ import annotations

import hashlib
import json
import logging

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import queue
from app.config import Settings
from app.errors import Conflict, FieldError, InvalidInput
from app.job_defaults import param_problems, resolve_job_params
from app.models import Item, Job, JobEvent, Owner, utcnow
from app.schemas import JobCreate, JobEventList, JobEventRead, JobList, JobRead
from app.services import job_states
from app.services.datasets import get_dataset
from app.services.job_views import job_read
from app.services.lookup import get_owned
from app.services.pages import count_rows, keyset_page
from vocab import FINISHED_STATUSES, JobStatus

log = logging.getLogger(__name__)


def _fingerprint(dataset_id: str, params: dict) -> str:
    canonical = json.dumps({"dataset_id": dataset_id, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job, request_hash: str, key: str) -> JobRead:
    if job.request_hash != request_hash:
        raise InvalidInput(
            f"Idempotency-Key: {key!r} was used for a different request (job {job.id}); use a new key",
            code="idempotency_key_reused",
            errors=[FieldError(field="Idempotency-Key", message="the key was used with a different body")],
        )
    return job_read(job)


def create_job(
    *,
    session: Session,
    owner: Owner,
    dataset_id: str,
    job_in: JobCreate,
    idempotency_key: str | None,
    settings: Settings,
    request_id: str | None = None,
) -> tuple[JobRead, bool]:
    """Create and enqueue a training job; returns (job, replayed). ``request_id`` (the creating request's
    X-Request-ID) is stored on the job and in its first event; the worker logs it with every line of the run."""
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not idempotency_key or len(idempotency_key) > 200:
            raise InvalidInput(
                "Idempotency-Key: 1 to 200 characters",
                errors=[FieldError(field="Idempotency-Key", message="1 to 200 characters")],
            )
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    params = job_in.model_dump()
    request_hash = _fingerprint(dataset.id, params)
    if idempotency_key:
        prior = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if prior is not None:
            return _replay(prior, request_hash, idempotency_key), True
    n_items = session.scalar(select(func.count()).select_from(Item).where(Item.dataset_id == dataset.id)) or 0
    if not n_items:
        raise Conflict(f"dataset {dataset.id} has no items to train on", code="dataset_empty")
    if len(dataset.classes) < 2:
        raise Conflict(f"dataset {dataset.id} needs at least 2 classes to train", code="too_few_classes")
    params = resolve_job_params(params, items=n_items, classes=len(dataset.classes))
    problems = param_problems(params)
    if problems:
        raise InvalidInput(
            "; ".join(f"{f}: {m}" for f, m in problems), errors=[FieldError(field=f, message=m) for f, m in problems]
        )
    params["device"] = job_in.device or settings.job_device
    job = Job(
        owner_id=owner.id,
        dataset_id=dataset.id,
        type="train",
        status=JobStatus.QUEUED,
        params=params,
        progress={"stage": "queued", "epoch": 0, "epochs": params["epochs"], "fraction": 0.0},
        metrics={},
        attempt=0,
        max_attempts=settings.job_max_attempts,
        idempotency_key=idempotency_key or None,
        request_hash=request_hash,
        request_id=request_id,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        prior = session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == idempotency_key))
        if prior is None:  # pragma: no cover - the unique constraint names only this pair
            raise
        return _replay(prior, request_hash, idempotency_key or ""), True
    queued = {"stage": "queued", "device": params["device"], "queue": settings.queue_for(params["device"])}
    job_states.created(session, job, events=[("stage", {**queued, "request_id": request_id})])
    session.commit()
    log.info("job %s created on dataset %s, %s queue %s", job.id, dataset.id, params["device"], queued["queue"])
    _enqueue(session=session, job=job)
    return job_read(job), False


def _enqueue(*, session: Session, job: Job) -> None:
    """Send the job id to the broker (after the commit); on failure keep it queued for the reaper."""
    try:
        queue.enqueue_job(job.id, queue.job_device(job.params))
    except Exception as exc:
        log.warning("job %s: broker unavailable, left queued for the reaper: %s", job.id, exc)
        session.add(
            JobEvent(
                job_id=job.id,
                kind="error",
                data={
                    "code": "broker_unavailable",
                    "message": f"could not send the job to the broker ({type(exc).__name__}); it stays queued "
                    "and is re-sent when the broker is back",
                },
            )
        )
        try:
            session.commit()
        except Exception:  # pragma: no cover - the event is informative only
            session.rollback()


def get_job(*, session: Session, owner: Owner, job_id: str) -> Job:
    """The owner's job; 404 for a missing id and for another owner's."""
    return get_owned(session, Job, job_id, owner=owner, what="job")


def read_job(*, session: Session, owner: Owner, job_id: str) -> JobRead:
    return job_read(get_job(session=session, owner=owner, job_id=job_id))


def list_jobs(
    *,
    session: Session,
    owner: Owner,
    cursor: str | None,
    limit: int,
    dataset_id: str | None,
    status: str | None,
) -> JobList:
    """A page of the owner's jobs, oldest first (``app.services.pages``), filtered by dataset and status.

    A ``dataset_id`` that is not the owner's (or does not exist) is a 404, like every other use of an id."""
    stmt = select(Job).where(Job.owner_id == owner.id)
    if dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == get_dataset(session=session, owner=owner, dataset_id=dataset_id).id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    page = keyset_page(session, stmt, Job, cursor=cursor, limit=limit)
    return JobList(data=[job_read(j) for j in page.rows], next_cursor=page.next_cursor, total=page.total)


def list_events(*, session: Session, owner: Owner, job_id: str, after: int | None, limit: int) -> JobEventList:
    """Events in order, after the id ``after`` (exclusive); ``total`` counts all the job's events (``after`` is the
    cursor, as in ``app.services.pages``: it does not change the total)."""
    job = get_job(session=session, owner=owner, job_id=job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    total = count_rows(session, stmt)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    events = list(session.scalars(stmt.order_by(JobEvent.id).limit(limit + 1)))
    has_more = len(events) > limit
    events = events[:limit]
    return JobEventList(
        data=[JobEventRead.model_validate(e) for e in events],
        next_after=events[-1].id if events else after,
        has_more=has_more,
        total=total,
    )


def cancel_job(*, session: Session, owner: Owner, job_id: str) -> JobRead:
    """Cooperative cancel (see the module docstring)."""
    job = get_job(session=session, owner=owner, job_id=job_id)
    if not job_states.cancel(session, job.id, now=utcnow(), message="cancelled before it started"):
        session.refresh(job)
        if job.status in FINISHED_STATUSES:
            session.rollback()
            raise Conflict(f"job {job.id} already finished ({job.status}); nothing to cancel", code="job_finished")
    session.commit()
    session.refresh(job)
    return job_read(job)
