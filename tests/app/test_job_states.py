"""app/services/job_states.py, the one writer of a job's status, on the real PostgreSQL: a transition takes only from
its expected statuses and, fenced, only while the runner holds the lease; when it takes, the row, the job's events and
the webhook outbox row change together, and when it does not, none of them does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update

from app.db import session_scope
from app.dbclock import db_now
from app.models import Job, JobEvent, WebhookDelivery
from app.services import job_states
from tests.app.conftest import Api
from vocab import JobStatus


def _counts(job_id: str) -> tuple[int, list[str]]:
    """(the job's events, the events of the webhook deliveries naming it, oldest first)."""
    with session_scope() as session:
        events = session.scalar(select(func.count()).where(JobEvent.job_id == job_id))
        sent = session.scalars(
            select(WebhookDelivery.event).where(WebhookDelivery.body.contains(job_id)).order_by(WebhookDelivery.id)
        )
        return events, list(sent)


def test_a_transition_takes_only_from_its_expected_status_and_lease(alice: Api) -> None:
    alice.post("/webhooks", json={"url": "https://93.184.215.14/hooks/states"})
    ds = alice.make_dataset(2, offset=5300)
    job_id = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 2}).json()["id"]
    with session_scope() as session:  # a run holds it
        session.execute(
            update(Job).where(Job.id == job_id).values(status="running", lease_owner="me", lease_expires_at=db_now(60))
        )
    start = _counts(job_id)
    assert start == (1, ["job.queued"])  # created: its queued event and webhook (job_states.created)
    now = datetime.now(UTC)

    with session_scope() as session:  # not queued: the cancel of a queued job does not take
        assert not job_states.transition(
            session, job_id, JobStatus.CANCELLED, expected=JobStatus.QUEUED, now=now, events=[("stage", {"x": 1})]
        )
        # running, but another runner's lease: the fenced end does not take
        assert not job_states.transition(
            session, job_id, JobStatus.FAILED, expected=JobStatus.RUNNING, fence="someone-else", now=now
        )
        assert not job_states.fenced_update(session, job_id, runner="someone-else", progress={"stage": "x"})
    assert _counts(job_id) == start
    assert alice.get(f"/jobs/{job_id}").json()["status"] == "running"

    with session_scope() as session:
        assert job_states.fenced_update(session, job_id, runner="me", progress={"stage": "training"})
        assert job_states.transition(
            session,
            job_id,
            JobStatus.FAILED,
            expected=JobStatus.RUNNING,
            fence="me",
            now=now + timedelta(seconds=1),
            events=[("error", {"code": "boom", "message": "it broke"})],
            error_code="boom",
            error_message="it broke",
        )
    job = alice.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"] == {"code": "boom", "message": "it broke"}
    assert job["progress"]["stage"] == "training" and job["finished_at"]
    with session_scope() as session:
        row = session.get(Job, job_id)
        assert row.lease_expires_at is None and row.updated_at == now + timedelta(seconds=1)
        assert row.finished_at == row.updated_at
    assert _counts(job_id) == (start[0] + 1, [*start[1], "job.failed"])
    events = alice.get(f"/jobs/{job_id}/events").json()["data"]
    assert events[-1]["kind"] == "error" and events[-1]["data"] == {"code": "boom", "message": "it broke"}

    with session_scope() as session:  # finished: no status is expected to leave it
        assert not job_states.transition(
            session, job_id, JobStatus.RUNNING, expected=(JobStatus.QUEUED, JobStatus.RUNNING), now=now
        )
