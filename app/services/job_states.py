"""The one owner of a job's status: every change is :func:`transition` (a job enters ``queued`` by :func:`created`).

A transition is three writes in the caller's transaction, all or none: the conditional ``UPDATE`` of the job's row
(it takes only while the row is in an ``expected`` status, and, for a running job's own writes, while ``fence`` still
holds the lease), the job's events (``JobEvent``), and the webhook outbox row of the status it enters
(``vocab.STATUS_EVENTS``, written by ``app.services.webhooks.emit_job_event``). It also stamps ``updated_at`` and, for
a finished status, ``finished_at`` and the end of the lease, so the paths that end a job cannot drift apart.

=========== ============================================ ==========================================================
status      entered from                                 by
=========== ============================================ ==========================================================
queued      (new)                                        ``app.services.jobs.create_job``
queued      running, lease expired                       the reaper (``worker.leases.reap_once``)
running     queued; running, lease expired               the claim (``worker.leases.claim_job``)
cancelled   queued                                       ``app.services.jobs.cancel_job``; deleting the dataset
                                                         (``app.services.datasets.delete_dataset``); a claim that
                                                         finds ``cancel_requested`` (``worker.leases``)
cancelled   running (fenced)                             the run, after a requested cancel (``worker.training``)
failed      queued; running, lease expired               a claim past ``max_attempts`` (``worker.leases``)
failed      running (fenced)                             the run's error (``worker.training``)
succeeded   running (fenced)                             the run's save (``worker.job_rows.save_result``)
=========== ============================================ ==========================================================

A running job is never cancelled from outside: :func:`request_cancel` sets ``cancel_requested`` and the run, which
polls it, ends itself ``cancelled``. :func:`cancel` is that rule for the API and the dataset delete alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.models import Job, JobEvent
from app.services.webhooks import emit_job_event
from vocab import FINISHED_STATUSES, STATUS_EVENTS, JobStatus

#: A job event: (kind, data), e.g. ("stage", {"stage": "cancelled"}).
Event = tuple[str, dict]


def add_event(session: Session, job_id: str, kind: str, **data: Any) -> None:
    """Append one event to the job's log (``GET /jobs/{id}/events``)."""
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def _lease_holder(runner: str) -> tuple:
    """The rows a run may still write: its job, running, leased to ``runner``."""
    return (Job.lease_owner == runner, Job.status == JobStatus.RUNNING)


def fenced_update(session: Session, job_id: str, *, runner: str, **values: Any) -> bool:
    """A running job's own write that is not a status change (progress, metrics): only while ``runner`` holds the
    lease. False when it no longer does (the reaper gave the job to another run, or the job ended)."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, *_lease_holder(runner))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1


def transition(
    session: Session,
    job_id: str,
    to: JobStatus,
    *,
    expected: JobStatus | Iterable[JobStatus],
    now: Any,
    fence: str | None = None,
    where: Iterable = (),
    events: Iterable[Event] = (),
    **values: Any,
) -> bool:
    """Move job ``job_id`` to ``to`` if it is in ``expected`` (and ``where`` holds, and ``fence``, a runner id, still
    holds its lease); returns whether it moved. When it does, ``events`` are logged and the webhook of ``to`` is
    queued, in the caller's transaction. ``now`` is the time stamped (a datetime, or ``app.dbclock.db_now()``);
    ``values`` are the other columns the change sets."""
    allowed = [JobStatus(expected)] if isinstance(expected, str) else [JobStatus(s) for s in expected]
    to = JobStatus(to)
    stamp: dict[str, Any] = {"updated_at": now}
    if to in FINISHED_STATUSES:
        stamp.update(finished_at=now, lease_expires_at=None)
    stmt = update(Job).where(Job.id == job_id, Job.status.in_(allowed), *where)
    if fence is not None:
        stmt = stmt.where(*_lease_holder(fence))
    res = session.execute(
        stmt.values(**{**stamp, **values, "status": to.value}).execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return False
    _announce(session, job_id, to, events)
    return True


def created(session: Session, job: Job, *, events: Iterable[Event] = ()) -> None:
    """A new job, just added in ``queued``: its events and its ``job.queued`` webhook (the row is flushed already)."""
    if job.status != JobStatus.QUEUED:
        raise ValueError(f"job {job.id}: a new job starts queued, not {job.status!r}")
    _announce(session, job.id, JobStatus.QUEUED, events)


def _announce(session: Session, job_id: str, status: JobStatus, events: Iterable[Event]) -> None:
    for kind, data in events:
        add_event(session, job_id, kind, **data)
    emit_job_event(session, job_id, STATUS_EVENTS[status])


def request_cancel(session: Session, job_id: str, *, now: Any) -> bool:
    """Ask the run of a running job to stop (it polls ``cancel_requested`` and ends ``cancelled`` itself); False when
    the job is not running or was asked already."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(False))
        .values(cancel_requested=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return False
    add_event(session, job_id, "stage", stage="cancel_requested")
    return True


def cancel(session: Session, job_id: str, *, now: Any, message: str, reason: str | None = None) -> bool:
    """Cancel a job that has not finished: a queued one becomes ``cancelled`` now (``error_message``: ``message``); a
    running one is asked to stop (:func:`request_cancel`). Returns whether a queued job was cancelled. ``reason`` goes
    into the ``cancelled`` event when given."""
    stage = {"stage": "cancelled", **({"reason": reason} if reason else {})}
    if transition(
        session,
        job_id,
        JobStatus.CANCELLED,
        expected=JobStatus.QUEUED,
        now=now,
        events=[("stage", stage)],
        cancel_requested=True,
        error_code="cancelled",
        error_message=message,
    ):
        return True
    request_cancel(session, job_id, now=now)
    return False
