"""Claim, heartbeat and reaper rules against the real PostgreSQL database (no worker process needed)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.dbclock import db_now
from app.models import Job
from ml.pipeline import select_training_items
from tests.worker.conftest import events, get_job, make_dataset, make_job
from worker.leases import ClaimOutcome, Heartbeat, claim_job, reap_once, renew_lease, utcnow


def _set(job_id: str, **values) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


@pytest.fixture(params=["prod_env", "embedded_env"])
def any_db(request):
    """PostgreSQL, then the embedded SQLite: lease times are SQL on the database's clock, written per dialect."""
    return request.getfixturevalue(request.param)


def _expire(job_id: str) -> None:
    """The lease ran out a second ago, on the database's clock (what a runner that stopped renewing leaves)."""
    _set(job_id, lease_expires_at=db_now(-1))


def test_claim_queued_job_once_then_busy(prod_env):
    job_id = make_job(*make_dataset(3)[:2])
    first = claim_job(job_id, runner="a", lease_seconds=60)
    second = claim_job(job_id, runner="b", lease_seconds=60)
    assert (first.outcome, first.attempt) == (ClaimOutcome.CLAIMED, 1)
    assert second.outcome == ClaimOutcome.BUSY
    job = get_job(job_id)
    assert (job.status, job.attempt, job.lease_owner) == ("running", 1, "a")
    assert [e.data["runner"] for e in events(job_id, "attempt")] == ["a"]


def test_claim_retried_by_the_same_runner_is_still_its_own(prod_env):
    """A claim retried after a dropped connection (its first commit went through unanswered) keeps the job."""
    job_id = make_job(*make_dataset(3)[:2])
    first = claim_job(job_id, runner="a", lease_seconds=60)
    again = claim_job(job_id, runner="a", lease_seconds=60)
    assert (first.outcome, again.outcome, again.attempt) == (ClaimOutcome.CLAIMED, ClaimOutcome.CLAIMED, 1)
    assert get_job(job_id).attempt == 1 and len(events(job_id, "attempt")) == 1


def test_concurrent_claims_have_one_winner(prod_env):
    job_id = make_job(*make_dataset(3)[:2])
    outcomes: list[ClaimOutcome] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        outcomes.append(claim_job(job_id, runner=f"r{i}", lease_seconds=60).outcome)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(ClaimOutcome.CLAIMED) == 1
    assert outcomes.count(ClaimOutcome.BUSY) == 7
    assert get_job(job_id).attempt == 1


def test_expired_lease_is_reclaimed_and_old_runner_is_fenced(any_db):
    job_id = make_job(*make_dataset(3)[:2])
    assert claim_job(job_id, runner="a", lease_seconds=60).outcome == ClaimOutcome.CLAIMED
    _expire(job_id)
    claim = claim_job(job_id, runner="b", lease_seconds=60)
    assert (claim.outcome, claim.attempt) == (ClaimOutcome.CLAIMED, 2)
    assert not renew_lease(job_id, runner="a", lease_seconds=60)  # the stale runner learns it lost the job
    assert renew_lease(job_id, runner="b", lease_seconds=60)


def test_attempts_exhausted_fails_with_clear_message(prod_env):
    job_id = make_job(*make_dataset(3)[:2], max_attempts=2)
    for runner in ("a", "b"):
        assert claim_job(job_id, runner=runner, lease_seconds=60).outcome == ClaimOutcome.CLAIMED
        _expire(job_id)
    claim = claim_job(job_id, runner="c", lease_seconds=60)
    assert claim.outcome == ClaimOutcome.EXHAUSTED
    job = get_job(job_id)
    assert (job.status, job.error_code, job.attempt) == ("failed", "attempts_exhausted", 2)
    assert "started 2 time(s)" in job.error_message and "lost its worker" in job.error_message
    assert "TAGSIFT_JOB_MAX_ATTEMPTS" in job.error_message
    assert events(job_id, "error")[0].data["code"] == "attempts_exhausted"


def test_finished_and_cancelled_jobs_are_not_run(prod_env):
    owner, ds, _ = make_dataset(3)
    done = make_job(owner, ds)
    _set(done, status="succeeded")
    assert claim_job(done, runner="a", lease_seconds=60).outcome == ClaimOutcome.FINISHED
    cancel = make_job(owner, ds)
    _set(cancel, cancel_requested=True)
    assert claim_job(cancel, runner="a", lease_seconds=60).outcome == ClaimOutcome.CANCELLED
    assert get_job(cancel).status == "cancelled"
    assert claim_job("0" * 32, runner="a", lease_seconds=60).outcome == ClaimOutcome.MISSING


def test_reaper_requeues_expired_and_stale_jobs_once(any_db):
    owner, ds, _ = make_dataset(3)
    running = make_job(owner, ds)
    assert claim_job(running, runner="dead", lease_seconds=60).outcome == ClaimOutcome.CLAIMED
    _expire(running)
    stale = make_job(owner, ds, device="gpu")
    _set(stale, updated_at=utcnow() - timedelta(seconds=600))
    fresh = make_job(owner, ds)
    live = make_job(owner, ds)
    assert claim_job(live, runner="alive", lease_seconds=600).outcome == ClaimOutcome.CLAIMED

    mine = {running, stale, fresh, live}  # the database is the test run's: other tests' jobs may be in it too
    found = {job.job_id: job for job in reap_once(requeue_after_seconds=300) if job.job_id in mine}
    assert set(found) == {running, stale}
    assert "worker lost" in found[running].reason and "dead" in found[running].reason
    # each goes back to its own queue: a GPU job found by any worker's reaper is re-sent to the GPU queue
    assert (found[running].device, found[stale].device) == ("auto", "gpu")
    assert get_job(running).status == "queued" and get_job(running).lease_expires_at is None
    assert fresh not in found and get_job(live).status == "running"
    # a second reaper pass (another worker) finds nothing new
    assert [job for job in reap_once(requeue_after_seconds=300) if job.job_id in mine] == []
    # the requeued job is claimed as attempt 2
    assert claim_job(running, runner="next", lease_seconds=60).attempt == 2


def test_heartbeat_renews_lease_and_sees_cancel(any_db):
    job_id = make_job(*make_dataset(3)[:2])
    claim_job(job_id, runner="me", lease_seconds=2)
    before = get_job(job_id).lease_expires_at
    with Heartbeat(job_id, runner="me", lease_seconds=2, beat_seconds=0.2, poll_seconds=0.1) as hb:
        import time

        time.sleep(0.6)
        assert get_job(job_id).lease_expires_at > before
        assert not hb.should_stop()
        _set(job_id, cancel_requested=True)
        time.sleep(0.5)
        assert hb.cancelled and not hb.lost
        _set(job_id, lease_owner="someone-else")
        time.sleep(0.5)
        assert hb.lost


def test_select_training_items_caps_each_class():
    cands = [["a"], ["a"], ["a", "b"], ["a", "b"], ["b", "c"], ["c"], ["c"], ["a"]]
    certain = [True, False, False, False, False, False, False, False]
    chosen = select_training_items(cands, certain, shots=2, seed=0)
    assert 0 in chosen  # certain items go first
    assert len(chosen) <= 6
    assert select_training_items(cands, certain, shots=None, seed=0) == list(range(8))
    assert chosen == select_training_items(cands, certain, shots=2, seed=0)
