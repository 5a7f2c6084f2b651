"""Who runs a job: the atomic claim, the heartbeat that keeps a lease, and the reaper that re-enqueues lost jobs.

The job row is the source of truth; broker messages only name a job id and may arrive twice (acks_late redelivery,
a reaper re-enqueue, a Redis visibility timeout). Every rule below is one conditional ``UPDATE`` so that any number
of workers on any number of hosts agree without locks held across a run:

* **Claim** (:func:`claim_job`): ``queued`` -> ``running``, or ``running`` whose lease expired -> ``running``
  with ``attempt + 1`` and a fresh lease ``<host>:<pid>:<uuid>``. Only one UPDATE can match, so a job never runs
  twice at once. A finished job, or one leased by a live runner, is left alone (duplicate delivery). A claim that
  would start run ``max_attempts + 1`` fails the job with ``attempts_exhausted`` instead.
* **Heartbeat** (:class:`Heartbeat`): a daemon thread with its own sessions renews the lease every
  ``job_heartbeat_seconds`` and reads ``cancel_requested`` every ``job_cancel_poll_seconds``. If the lease is no
  longer ours (the reaper gave the job to someone else after a stall) the run is told to stop, and every write the
  run makes is fenced on ``lease_owner`` so a stale runner can never overwrite the new one.
* **Reaper** (:func:`reap_once`, :class:`Reaper`): each worker's main process runs it on a timer. A ``running`` job
  whose lease expired (its worker died: the embedded SQLite broker never redelivers, and Redis redelivers only
  after the visibility timeout when the whole worker died) is put back to ``queued`` and enqueued again; a
  ``queued`` job untouched for ``job_requeue_after_seconds`` (its message may have been lost, e.g. the broker was
  down at submit time) is enqueued again. Attempt accounting stays in the claim.
* **One clock** (:func:`app.dbclock.db_now`): every lease timestamp is written and compared in SQL with the database
  server's ``now()``, never a worker's own clock, so a worker whose clock runs minutes off neither loses its jobs to
  a reaper nor reaps live ones (tests/worker/test_clock_skew.py runs workers under libfaketime).
* **Queues** (docs/deploy.md): the reaper returns each job's ``device`` so that it is sent back to its own queue: a
  GPU job re-sent by a CPU worker's reaper still reaches only GPU workers.
* **Database outages** (:func:`retry_db`): a run's own writes (claim, progress, events, the final save) retry a
  dropped connection or a refused one with backoff for up to its lease, so a database restart shorter than the lease
  costs nothing but the wait. Past that the run stops without writing (:class:`DatabaseUnavailable`): its lease
  expires and the reaper re-runs the job from its last checkpoint, exactly as after a lost worker.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple, TypeVar

from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.db import session_scope
from app.dbclock import db_now
from app.models import Job
from app.queue import job_device
from app.services import job_states
from app.services.job_states import add_event
from vocab import FINISHED_STATUSES, JobStatus
from worker.loops import DONE, Loop
from worker.retry import first_line, with_backoff

log = logging.getLogger(__name__)

T = TypeVar("T")


def utcnow() -> datetime:
    """This process's clock (log lines, never leases: those use :func:`app.dbclock.db_now`)."""
    return datetime.now(UTC)


def new_runner_id() -> str:
    """``<host>:<pid>:<uuid>``: names this run in ``Job.lease_owner`` (and in logs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class ClaimOutcome(StrEnum):
    CLAIMED = "claimed"  # this runner owns the job now
    MISSING = "missing"  # no such job (deleted)
    FINISHED = "finished"  # already succeeded / failed / cancelled: nothing to do
    BUSY = "busy"  # a live runner holds the lease: duplicate delivery, nothing to do
    CANCELLED = "cancelled"  # cancel was requested before the run started: marked cancelled now
    EXHAUSTED = "exhausted"  # all attempts used: marked failed ("attempts_exhausted") now


@dataclass
class Claim:
    outcome: ClaimOutcome
    job_id: str
    runner: str
    attempt: int = 0
    request_id: str | None = None  # X-Request-ID of the POST that created the job (log lines, events)


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for longer than a run waits (its lease); the run stops without writing."""


def is_transient_db_error(exc: BaseException) -> bool:
    """True for a database that is down, restarting or dropped the connection (worth retrying), not a bad statement."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_db(fn: Callable[[], T], *, what: str, patience: float, first_delay: float = 0.2) -> T:
    """``fn()``, retried with backoff (``first_delay`` doubling up to 5 s) while the database is unreachable.

    Each call of ``fn`` must be one whole transaction (a ``session_scope``), so that a retry repeats all of it. Raises
    :class:`DatabaseUnavailable` once ``patience`` seconds have passed; any other error at once.
    """
    return with_backoff(
        fn,
        what=what,
        resource="database",
        patience=patience,
        first_delay=first_delay,
        transient=is_transient_db_error,
        give_up=lambda failures, exc: DatabaseUnavailable(
            f"{what}: the database was unreachable for {patience:.0f}s ({failures} tries): "
            f"{type(exc.orig if isinstance(exc, DBAPIError) else exc).__name__}"
        ),
    )


def claim_job(job_id: str, *, runner: str, lease_seconds: float) -> Claim:
    """Try to become the one runner of ``job_id`` (see the module docstring for the rules)."""
    with session_scope() as session:
        if _take(session, job_id, runner=runner, lease_seconds=lease_seconds):
            attempt, request_id = session.execute(select(Job.attempt, Job.request_id).where(Job.id == job_id)).one()
            add_event(session, job_id, "attempt", attempt=attempt, runner=runner, request_id=request_id)
            return Claim(ClaimOutcome.CLAIMED, job_id, runner, attempt, request_id)
    # Not claimable: find out why, and settle the two cases that end the job here.
    with session_scope() as session:
        return _not_taken(session, job_id, runner=runner)


def _take(session: Session, job_id: str, *, runner: str, lease_seconds: float) -> bool:
    """queued, or running with an expired lease -> running under ``runner``'s fresh lease, attempt + 1."""
    now = db_now()
    return job_states.transition(
        session,
        job_id,
        JobStatus.RUNNING,
        expected=(JobStatus.QUEUED, JobStatus.RUNNING),
        now=now,
        where=(
            Job.cancel_requested.is_(False),
            Job.attempt < Job.max_attempts,
            or_(Job.status == JobStatus.QUEUED, Job.lease_expires_at < now),
        ),
        attempt=Job.attempt + 1,
        lease_owner=runner,
        lease_expires_at=db_now(lease_seconds),
        started_at=now,
        finished_at=None,
        error_code=None,
        error_message=None,
    )


def _not_taken(session: Session, job_id: str, *, runner: str) -> Claim:
    job = session.get(Job, job_id)
    if job is None:
        return Claim(ClaimOutcome.MISSING, job_id, runner)
    if job.status in FINISHED_STATUSES:
        return Claim(ClaimOutcome.FINISHED, job_id, runner, job.attempt)
    if job.status == JobStatus.RUNNING and job.lease_owner == runner:  # our claim committed, its answer was lost
        return Claim(ClaimOutcome.CLAIMED, job_id, runner, job.attempt)
    live = session.scalar(select(Job.lease_expires_at >= db_now()).where(Job.id == job_id))
    if job.status == JobStatus.RUNNING and live:
        return Claim(ClaimOutcome.BUSY, job_id, runner, job.attempt)
    return _settle(session, job, runner=runner)


def _settle(session: Session, job: Job, *, runner: str) -> Claim:
    """A queued job, or a running one with an expired lease, that cannot run: cancelled (a cancel was requested) or
    failed (every attempt used), if nobody else settles it first (the row must be as it was read)."""
    unchanged = dict(
        expected=JobStatus(job.status),
        now=db_now(),
        where=(Job.attempt == job.attempt, Job.updated_at == job.updated_at),
        lease_owner=None,
    )
    if job.cancel_requested:
        reason = {"stage": "cancelled", "reason": "cancel requested before the run"}
        job_states.transition(session, job.id, JobStatus.CANCELLED, events=[("stage", reason)], **unchanged)
        return Claim(ClaimOutcome.CANCELLED, job.id, runner, job.attempt)
    message = (
        f"the job was started {job.attempt} time(s) and each run lost its worker (process killed, out of memory, "
        f"or host lost: the last runner {job.lease_owner or 'unknown'} stopped renewing its lease); giving up "
        f"after max_attempts={job.max_attempts} (TAGSIFT_JOB_MAX_ATTEMPTS). Check the worker's logs and memory, "
        "then submit the job again."
    )
    job_states.transition(
        session,
        job.id,
        JobStatus.FAILED,
        events=[("error", {"code": "attempts_exhausted", "message": message})],
        error_code="attempts_exhausted",
        error_message=message,
        **unchanged,
    )
    return Claim(ClaimOutcome.EXHAUSTED, job.id, runner, job.attempt)


def renew_lease(job_id: str, *, runner: str, lease_seconds: float) -> bool:
    """Extend our lease; False when the job is no longer ours (reaped and re-claimed, or finished)."""
    with session_scope() as session:
        res = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == runner, Job.status == JobStatus.RUNNING)
            .values(lease_expires_at=db_now(lease_seconds))
            .execution_options(synchronize_session=False)
        )
        return res.rowcount == 1


def cancel_requested(job_id: str) -> bool:
    with session_scope() as session:
        return bool(session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one_or_none())


class Heartbeat(Loop):
    """Renews the lease of a running job and watches its cancel flag, on a daemon thread (a :class:`Loop` that polls
    every ``poll_seconds`` and renews every ``beat_seconds``), while used as a context manager.

    ``should_stop()`` is what the run passes to ``ml`` as ``should_cancel``: it only reads two flags, so it is
    cheap to call between steps. ``lost`` tells a lost lease (stop without writing) from a user's cancel.
    """

    def __init__(self, job_id: str, *, runner: str, lease_seconds: float, beat_seconds: float, poll_seconds: float):
        self.job_id = job_id
        self.runner = runner
        self.lease_seconds = lease_seconds
        self.beat_seconds = max(0.05, beat_seconds)
        self.poll_seconds = max(0.05, min(poll_seconds, beat_seconds))
        self.cancelled = False
        self.lost = False
        self._elapsed = 0.0
        self._next_beat = 0.0
        self._failing = False
        super().__init__(f"heartbeat-{job_id[:8]}", interval=self.poll_seconds, wait_first=True)

    def should_stop(self) -> bool:
        return self.cancelled or self.lost

    def step(self) -> str | None:
        self._elapsed += self.poll_seconds
        try:
            if self._elapsed >= self._next_beat:
                self._next_beat = self._elapsed + self.beat_seconds
                if not renew_lease(self.job_id, runner=self.runner, lease_seconds=self.lease_seconds):
                    log.warning("job %s: lease lost by %s; stopping this run", self.job_id, self.runner)
                    self.lost = True
                    return DONE
            if cancel_requested(self.job_id):
                self.cancelled = True
            if self._failing:
                log.warning("job %s: heartbeat: database back", self.job_id)
                self._failing = False
        except Exception as exc:  # a DB outage: keep trying; the lease is long enough to ride a short one out
            if not is_transient_db_error(exc):
                log.exception("job %s: heartbeat failed", self.job_id)
            elif not self._failing:
                log.warning("job %s: heartbeat: database unavailable: %s", self.job_id, first_line(exc))
            self._failing = True
        return None


# --- reaper ---------------------------------------------------------------------------------------------------------


class Requeue(NamedTuple):
    """A job the reaper put back: send it again to the queue of ``device``."""

    job_id: str
    device: str  # "auto" | "cpu" | "gpu": the job's own queue (app.queue.job_device)
    reason: str


def reap_once(*, requeue_after_seconds: float) -> list[Requeue]:
    """Put back jobs whose runner died and find queued jobs whose message may be lost.

    Returns a :class:`Requeue` for every job that should be enqueued again (the caller sends the messages to the
    job's own queue). Each job is taken by a conditional UPDATE, so several workers reaping at once enqueue it once.
    Expiry is decided on the database's clock.
    """
    now = db_now()
    out: list[Requeue] = []
    with session_scope() as session:
        expired = session.execute(
            select(Job.id, Job.lease_owner, Job.attempt, Job.params).where(
                Job.status == JobStatus.RUNNING, Job.lease_expires_at < now
            )
        ).all()
        for job_id, owner, attempt, params in expired:
            reason = f"worker lost: runner {owner} of attempt {attempt} stopped renewing its lease"
            if job_states.transition(  # lease_owner kept: who was lost
                session,
                job_id,
                JobStatus.QUEUED,
                expected=JobStatus.RUNNING,
                now=now,
                where=(Job.lease_expires_at < now,),
                events=[("requeue", {"reason": reason})],
                lease_expires_at=None,
            ):
                out.append(Requeue(job_id, job_device(params), reason))
    stale_before = db_now(-requeue_after_seconds)
    with session_scope() as session:
        stale = session.execute(
            select(Job.id, Job.updated_at, Job.params).where(
                Job.status == JobStatus.QUEUED, Job.updated_at < stale_before
            )
        ).all()
        for job_id, updated_at, params in stale:
            res = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.updated_at == updated_at)
                .values(updated_at=now)  # not a status change: only the time the reaper looks at next
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                reason = f"queued since {updated_at:%Y-%m-%d %H:%M:%S} without a run: message enqueued again"
                add_event(session, job_id, "requeue", reason=reason)
                out.append(Requeue(job_id, job_device(params), reason))
    return out


class Reaper(Loop):
    """Runs :func:`reap_once` every ``interval`` seconds on a daemon thread and enqueues what it returns."""

    def __init__(self, *, interval: float, requeue_after_seconds: float, enqueue) -> None:
        self.requeue_after_seconds = requeue_after_seconds
        self.enqueue = enqueue
        super().__init__("tagsift-reaper", interval=interval)

    def tick(self) -> list[Requeue]:
        found = reap_once(requeue_after_seconds=self.requeue_after_seconds)
        for job in found:
            log.warning("reaper: job %s enqueued again on its %s queue (%s)", job.job_id, job.device, job.reason)
            self.enqueue(job.job_id, job.device)
        return found

    def step(self) -> None:
        self.tick()

    def on_error(self, exc: Exception) -> None:
        if is_transient_db_error(exc):
            log.warning("reaper pass skipped, database unavailable: %s", first_line(exc))
        elif isinstance(exc, KombuOperationalError | ConnectionError):  # the job stays queued: next pass
            log.warning("reaper pass cut short, broker unavailable: %s", first_line(exc))
        else:
            log.exception("reaper pass failed", exc_info=exc)
