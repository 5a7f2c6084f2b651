"""The shard rows' rules (``worker.shard_rows``) on PostgreSQL and on SQLite: one claim per shard, an expired lease
claimed again, fencing on the lease, only the job's current attempt, only the shard's backbone, nothing once the
job is cancelled or over, and helpers leave a shard claimed too often."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.models import EncodeShard, Job
from tests.worker.conftest import make_dataset, make_job
from worker.leases import utcnow
from worker.shard_rows import (
    MAX_HELPER_RUNS,
    claim_shard,
    finish_shard,
    forget,
    give_back,
    renew_shard,
    shard_state,
    write_plan,
)

BACKBONE = "tiny-backbone-id"


@pytest.fixture(params=["postgres", "sqlite"])
def db(request):
    return request.getfixturevalue("prod_env" if request.param == "postgres" else "embedded_env")


def _running_job(attempt: int = 1) -> str:
    owner, ds, _ = make_dataset(1)
    job_id = make_job(owner, ds)
    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status="running", attempt=attempt, lease_owner="runner:1:x")
        )
    return job_id


def _plan(job_id: str, shards: list[tuple[int, list[str]]], attempt: int = 1) -> None:
    with session_scope() as session:
        write_plan(session, job_id, attempt, BACKBONE, 7, shards)


def _claim(job_id: str, runner: str, *, helper: bool = True, lease: float = 60, backbone: str = BACKBONE):
    return claim_shard(job_id, runner=runner, lease_seconds=lease, backbone_id=backbone, helper=helper)


def test_each_shard_is_claimed_once_in_order_and_finished_by_its_owner(db) -> None:
    job_id = _running_job()
    _plan(job_id, [(2, ["a", "b"]), (2, ["c"]), (1, ["d", "e", "f"])])
    first, second, third = _claim(job_id, "w1"), _claim(job_id, "w2"), _claim(job_id, "w1")
    assert [s.seq for s in (first, second, third)] == [0, 1, 2]
    assert (first.views, first.seed, first.shas, first.runs, first.backbone_id) == (2, 7, ["a", "b"], 1, BACKBONE)
    assert _claim(job_id, "w3") is None  # all taken, every lease alive
    assert not finish_shard(first.id, runner="w2")  # fenced: not w2's
    assert not renew_shard(first.id, runner="w2", lease_seconds=60)
    assert renew_shard(first.id, runner="w1", lease_seconds=60) and finish_shard(first.id, runner="w1")
    assert not renew_shard(first.id, runner="w1", lease_seconds=60)  # done: nothing to renew
    give_back(second.id, runner="w2")
    again = _claim(job_id, "w3")
    assert (again.seq, again.runs) == (1, 2)
    assert finish_shard(again.id, runner="w3") and finish_shard(third.id, runner="w1")
    state = shard_state(job_id, 1)
    assert (state.shards, state.done, state.done_images, state.images, state.retaken) == (3, 3, 6, 6, 1)
    assert state.encoded_by == {"w1": 2, "w3": 1}
    forget(job_id)
    assert shard_state(job_id, 1).shards == 0


def test_an_expired_lease_is_claimed_again_and_the_old_owner_is_fenced_out(db) -> None:
    job_id = _running_job()
    _plan(job_id, [(1, ["a"])])
    lost = _claim(job_id, "dead", lease=0.5)
    assert _claim(job_id, "alive") is None
    time.sleep(1.2)  # the database's clock
    taken = _claim(job_id, "alive")
    assert taken.id == lost.id and taken.runs == 2
    assert not renew_shard(lost.id, runner="dead", lease_seconds=60) and not finish_shard(lost.id, runner="dead")
    assert finish_shard(taken.id, runner="alive")


def test_claims_follow_the_job_its_attempt_and_the_backbone(db) -> None:
    job_id = _running_job(attempt=2)
    _plan(job_id, [(1, ["old"])], attempt=1)  # a plan of an earlier attempt, not replaced (as if left behind)
    assert _claim(job_id, "w") is None
    _plan(job_id, [(1, ["a"]), (1, ["b"])], attempt=2)  # the new attempt's plan replaces every row
    assert shard_state(job_id, 1).shards == 0 and shard_state(job_id, 2).shards == 2
    assert _claim(job_id, "w", backbone="another-backbone") is None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    assert _claim(job_id, "w") is None
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=False, status="succeeded"))
    assert _claim(job_id, "w") is None


def test_helpers_leave_a_shard_claimed_too_often_the_jobs_own_run_does_not(db) -> None:
    job_id = _running_job()
    _plan(job_id, [(1, ["poison"])])
    with session_scope() as session:
        session.execute(
            update(EncodeShard)
            .where(EncodeShard.job_id == job_id)
            .values(
                status="running", runs=MAX_HELPER_RUNS, lease_owner="gone", lease_expires_at=utcnow() - timedelta(1)
            )
        )
    assert _claim(job_id, "helper") is None
    shard = _claim(job_id, "runner:1:x", helper=False)
    assert shard is not None and shard.runs == MAX_HELPER_RUNS + 1
