"""Leases on the database's clock: real workers whose own clocks are an hour off (libfaketime), real PostgreSQL + Redis.

Worker A runs a job with its clock an hour *behind*; worker B's clock is an hour *ahead* and its reaper passes every
second. Were leases written or compared on the workers' clocks, B's reaper would take A's live job at once (A's lease
would end an hour before B's "now"). On the database's clock, the live job stays A's over three of B's reaper passes
(counted by a canary job B re-sends each pass); once A is killed, B's reaper puts the job back only after its lease
(4 s) really ran out, and B runs it as attempt 2. Checked against the old behaviour: with ``db_now`` replaced by the
worker's own ``datetime.now()``, this test fails (B takes the live job as attempt 2).

libfaketime is Debian's ``libfaketime`` package (``apt-get install libfaketime``; .ci/run installs it): preloaded into
a process it shifts what ``clock_gettime(CLOCK_REALTIME)`` answers, so Python's ``time.time()`` and ``datetime.now()``
in that process are an hour off. The monotonic clock is left alone (``FAKETIME_DONT_FAKE_MONOTONIC``), so timeouts
and sleeps behave.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.models import Job
from app.queue import enqueue_job
from tests.worker.conftest import (
    SLOW_TEXT_CLIP,
    events,
    get_job,
    make_dataset,
    make_job,
    tiny_backbone,
    wait_for,
    wait_status,
)
from worker.leases import utcnow

pytestmark = pytest.mark.integration

HOUR = 3600


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1") + glob.glob("/usr/lib/faketime/*MT.so.1"))
    if not found:
        raise RuntimeError("libfaketime is not installed: apt-get install libfaketime (.ci/run does)")
    return found[0]


def _skewed(seconds: int) -> dict[str, str]:
    return {"LD_PRELOAD": _libfaketime(), "FAKETIME": f"{seconds:+d}", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _clock_of(env: dict[str, str]) -> float:
    out = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def _runner_pid(job_id: str, attempt: int) -> int:
    runner = next(e.data["runner"] for e in events(job_id, "attempt") if e.data["attempt"] == attempt)
    return int(runner.split(":")[1])


def test_skewed_worker_clocks_neither_reap_a_live_job_nor_keep_a_dead_one(prod_env, start_worker, tmp_path):
    behind, ahead = _skewed(-HOUR), _skewed(+HOUR)
    assert abs(_clock_of(behind) - (time.time() - HOUR)) < 60  # the skew really applies to a Python process
    assert abs(_clock_of(ahead) - (time.time() + HOUR)) < 60

    slow = {"TAGSIFT_BACKBONE": tiny_backbone(tmp_path, SLOW_TEXT_CLIP, "slow-text-clip")}
    owner, ds, _ = make_dataset(12)
    job_id = make_job(owner, ds, epochs=1000, batch_size=2)  # runs until cancelled

    # A (an hour behind, no reaper of its own) runs the job ...
    worker_a = start_worker(**behind, **slow, TAGSIFT_JOB_REAP_INTERVAL_SECONDS="0")
    enqueue_job(job_id, "auto")
    wait_for(lambda: get_job(job_id).progress.get("stage") == "training", 240, "the job to train on A")
    assert _runner_pid(job_id, 1) == worker_a.proc.pid
    # ... while B (an hour ahead) reaps every second. A canary, a stale queued GPU job no worker here takes, counts B's
    # reaper passes: each pass re-sends it (an event) right after its expiry scan has committed. Over three passes
    # spanning more than two leases, the live job stays A's.
    canary = make_job(owner, ds, device="gpu")
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == canary).values(updated_at=utcnow() - timedelta(seconds=600)))
    first_lease = get_job(job_id).lease_expires_at
    worker_b = start_worker(**ahead, **slow)
    started = time.monotonic()
    while len(events(canary, "requeue")) < 3 or time.monotonic() - started < 10:
        job = get_job(job_id)
        assert (job.status, job.attempt) == ("running", 1), (job.status, job.error_message)
        assert events(job_id, "requeue") == [], [e.data for e in events(job_id, "requeue")]
        assert time.monotonic() - started < 240, "B's reaper did not pass three times"
        time.sleep(0.5)
    assert get_job(job_id).lease_expires_at > first_lease  # A's heartbeat kept renewing it, on the database's clock

    # A dies: B's reaper re-runs the job once its lease has really run out (3-4 s after A's last heartbeat).
    worker_a.kill()
    killed_at = time.monotonic()
    wait_for(lambda: events(job_id, "requeue"), 60, "B's reaper to put the job back")
    assert time.monotonic() - killed_at > 2, "reaped before the lease ran out"
    assert "worker lost" in events(job_id, "requeue")[0].data["reason"]
    wait_for(lambda: len(events(job_id, "attempt")) == 2, 120, "B to claim the job")
    assert _runner_pid(job_id, 2) == worker_b.proc.pid
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    job = wait_status(job_id, ("cancelled", "failed", "succeeded"), timeout=120)
    assert (job.status, job.attempt) == ("cancelled", 2), (job.error_message, worker_b.log()[-3000:])
