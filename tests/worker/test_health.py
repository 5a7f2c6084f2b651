"""The worker's health file answers during a job (``--pool solo``: the GPU worker's pool), and the worker's log lines
of a job carry the job id and the request id that created it. Real ``tagsift worker`` process, PostgreSQL + Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.models import Job
from app.queue import enqueue_job
from tests.worker.conftest import (
    ROOT,
    SLOW_TEXT_CLIP,
    TAGSIFT,
    get_job,
    make_dataset,
    make_job,
    tiny_backbone,
    wait_for,
)

pytestmark = pytest.mark.integration


def _health(path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [str(TAGSIFT)] if TAGSIFT.exists() else [sys.executable, "-m", "worker.cli"]
    env = {**os.environ, "TAGSIFT_WORKER_HEALTH_FILE": str(path), "TAGSIFT_WORKER_HEALTH_SECONDS": "0.5"}
    return subprocess.run([*cmd, "worker-health", *extra], env=env, cwd=ROOT, capture_output=True, text=True)


def test_health_answers_during_a_solo_job_and_fails_once_the_worker_is_gone(prod_env, start_worker, tmp_path):
    health = tmp_path / "worker.health"
    assert _health(health).returncode == 1  # no worker yet: unhealthy, saying why
    owner, ds, _ = make_dataset(12)
    job_id = make_job(owner, ds, epochs=1000, batch_size=2)  # runs until cancelled
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(request_id="req-health-1"))
    worker = start_worker(
        TAGSIFT_BACKBONE=tiny_backbone(tmp_path, SLOW_TEXT_CLIP, "slow-text-clip"),
        TAGSIFT_WORKER_HEALTH_FILE=str(health),
        TAGSIFT_WORKER_HEALTH_SECONDS="0.5",
    )
    enqueue_job(job_id, "auto")
    wait_for(lambda: get_job(job_id).progress.get("stage") == "training", 240, "the job to train")
    for _ in range(3):  # the solo worker's only pool thread is training: the health thread still writes
        res = _health(health, "--max-age", "3")
        assert res.returncode == 0, res.stderr + worker.log()[-2000:]
        assert "cpu worker pid" in res.stdout
        time.sleep(1.5)
    # the run's log lines name the job and the request that created it
    lines = [line for line in worker.log().splitlines() if f"job_id={job_id}" in line]
    assert lines and all("request_id=req-health-1" in line for line in lines), lines[:3]

    worker.kill()
    res = _health(health, "--max-age", "3")
    assert res.returncode == 1 and "gone" in res.stderr, res.stderr  # stale, or its process gone


def test_the_default_interval_allows_three_missed_writes(tmp_path, tagsift_env) -> None:
    """TAGSIFT_WORKER_HEALTH_SECONDS' default (10 s, the images') makes a file up to 30 s old healthy."""
    import json

    settings = tagsift_env(worker_health_file=str(tmp_path / "h"))
    assert settings.worker_health_seconds == 10
    for age, healthy in ((25, 0), (35, 1)):
        (tmp_path / "h").write_text(json.dumps({"pid": os.getpid(), "time": time.time() - age, "kind": "cpu"}))
        res = subprocess.run(
            [*([str(TAGSIFT)] if TAGSIFT.exists() else [sys.executable, "-m", "worker.cli"]), "worker-health"],
            env=os.environ.copy(),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert res.returncode == healthy, (age, res.stdout, res.stderr)
