"""Real ``tagsift worker`` processes on the real PostgreSQL + Redis (and on the embedded SQLite default).

Jobs are rows committed first and then enqueued by task name, exactly as the API does; the worker is a separate
process (no eager mode), so these tests exercise the broker, acks_late, the claim, the heartbeat and the reaper.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.db import session_scope
from app.models import Item, Job, Model
from app.queue import TRAIN_TASK, enqueue
from app.storage import get_storage
from tests.worker.conftest import events, get_job, make_dataset, make_job, model_count, wait_for, wait_status
from worker.leases import utcnow

pytestmark = pytest.mark.integration


def _items(dataset_id: str) -> list[Item]:
    with session_scope() as session:
        return list(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)))


def _model(job_id: str) -> Model:
    with session_scope() as session:
        return session.scalars(select(Model).where(Model.job_id == job_id)).one()


def test_job_runs_to_success_and_writes_everything(prod_env, start_worker):
    owner, ds, _ = make_dataset(12, reviewer_item=True)
    job_id = make_job(owner, ds, epochs=3)
    worker = start_worker()
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=120)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert job.progress == {"stage": "succeeded", "epoch": 3, "epochs": 3, "fraction": 1.0}
    assert job.attempt == 1 and job.lease_expires_at is None
    assert job.metrics["items"] == 12 and job.metrics["labelled_items"] == 11 and job.metrics["device"] == "cpu"

    stages = [e.data["stage"] for e in events(job_id, "stage")]
    assert stages == ["loading_backbone", "encoding", "training", "labelling", "exporting", "succeeded"]
    assert [e.data["epoch"] for e in events(job_id, "epoch")] == [1, 2, 3]
    assert all("loss" in e.data for e in events(job_id, "epoch"))

    model = _model(job_id)
    assert model.id == job.model_id and model.classes == ["red", "green", "blue"] and model.method == "coop"
    assert set(model.artifacts) == {"tower.onnx", "tower.json", "head.npz", "classes.json", "preprocess.json"} | {
        "model_card.md"
    }
    storage = get_storage()
    assert json.loads(storage.get(model.artifacts["classes.json"])) == ["red", "green", "blue"]
    card = storage.get(model.artifacts["model_card.md"]).decode()
    assert "coop" in card and "Intended use" in card and "red, green, blue" in card

    items = _items(ds)
    reviewer, rest = items[0], items[1:]
    assert (reviewer.label, reviewer.label_source, reviewer.model_id) == ("blue", "reviewer", None)
    for item in rest:
        assert item.label in item.candidates and item.label_source == "model" and item.model_id == model.id
        assert 0.0 <= item.margin <= item.confidence <= 1.0
        assert item.needs_review == (item.confidence < prod_env.review_confidence)
    assert not (prod_env.data_dir / "jobs" / job_id).exists()  # checkpoint removed once finished


def test_duplicate_delivery_runs_once(prod_env, start_worker):
    owner, ds, _ = make_dataset(6)
    job_id = make_job(owner, ds, epochs=2)
    for _ in range(3):
        enqueue(TRAIN_TASK, job_id)  # e.g. a redelivery plus a reaper re-enqueue
    worker = start_worker()
    wait_status(job_id, ("succeeded",), timeout=120)
    # the two extra messages are consumed and return quietly (the reaper may add one more while the worker starts:
    # a queued job older than TAGSIFT_JOB_REQUEUE_AFTER_SECONDS is re-sent, and that copy returns quietly too)
    wait_for(lambda: worker.log().count("not run (finished)") >= 2, 30, "the duplicates to be consumed")
    job = get_job(job_id)
    assert job.attempt == 1 and model_count(job_id) == 1
    assert len(events(job_id, "attempt")) == 1


def test_cancel_while_running(prod_env, start_worker):
    owner, ds, _ = make_dataset(6)
    job_id = make_job(owner, ds, epochs=5000)
    start_worker()
    enqueue(TRAIN_TASK, job_id)
    wait_for(lambda: len(events(job_id, "epoch")) >= 2, 90, "training to start")
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    job = wait_status(job_id, ("cancelled", "succeeded", "failed"), timeout=30)
    assert job.status == "cancelled" and job.model_id is None and model_count(job_id) == 0
    assert len(events(job_id, "epoch")) < 5000
    assert not (prod_env.data_dir / "jobs" / job_id).exists()


# SIGKILL mid-run and resume from the checkpoint: tests/worker/test_faults.py (the kill lands inside an epoch, and
# the resumed job's labels equal an uninterrupted run's).


def test_attempts_exhausted_fails_with_clear_error(prod_env, start_worker):
    owner, ds, _ = make_dataset(3)
    job_id = make_job(owner, ds, max_attempts=1)
    with session_scope() as session:  # a run whose worker died: lease long expired, all attempts used
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="running", attempt=1, lease_owner="gone:1:x", lease_expires_at=utcnow() - timedelta(1))
        )
    start_worker()  # no message was ever sent: the reaper finds it
    job = wait_status(job_id, ("failed",), timeout=60)
    assert job.error_code == "attempts_exhausted"
    assert "started 1 time(s)" in job.error_message and "gone:1:x" in job.error_message
    assert model_count(job_id) == 0


def test_missing_backbone_fails_with_how_to_fix(prod_env, start_worker, tmp_path):
    owner, ds, _ = make_dataset(3)
    job_id = make_job(owner, ds)
    start_worker(TAGSIFT_BACKBONE=f"RN50:{tmp_path / 'absent.safetensors'}")
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("failed", "succeeded"), timeout=90)
    assert job.status == "failed" and job.error_code == "backbone_unavailable"
    assert "absent.safetensors" in job.error_message and "checkpoint" in job.error_message


def test_embedded_default_sqlite_broker(embedded_env, start_worker):
    """SQLite + kombu's SQLAlchemy broker: one real worker process, the same task code; its broker never
    redelivers, so a queued job whose message was lost is picked up by the reaper."""
    assert embedded_env.is_embedded and embedded_env.broker_url.startswith("sqla+sqlite")
    owner, ds, _ = make_dataset(6)
    sent = make_job(owner, ds, epochs=2)
    lost = make_job(owner, ds, epochs=2)  # committed, but its message never reached the broker
    enqueue(TRAIN_TASK, sent)
    worker = start_worker()
    for job_id in (sent, lost):
        job = wait_status(job_id, ("succeeded", "failed"), timeout=120)
        assert job.status == "succeeded", (job.error_message, worker.log()[-3000:])
        assert model_count(job_id) == 1
    assert any("enqueued again" in e.data["reason"] for e in events(lost, "requeue"))
    # two models of one backbone: one tower, stored by the first job and found by its address by the second
    towers = {_model(job_id).artifacts["tower.onnx"] for job_id in (sent, lost)}
    assert len(towers) == 1 and len(list((embedded_env.data_dir / "towers").glob("*.json"))) == 1
