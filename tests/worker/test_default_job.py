"""The job a user gets with no parameters: default views (TAGSIFT_TRAIN_VIEWS unset), method ``auto`` resolved as the
API resolves it (prompt alignment + PiCO on a small dataset), run by a real worker process end to end."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import session_scope
from app.job_defaults import resolve_job_params
from app.models import Item, Job
from app.queue import TRAIN_TASK, enqueue
from app.schemas import JobCreate
from tests.worker.conftest import CLASSES, events, make_dataset, wait_status

pytestmark = pytest.mark.integration


def _default_job(owner_id: str, dataset_id: str, items: int) -> str:
    params = resolve_job_params(JobCreate().model_dump(), items=items, classes=len(CLASSES))
    with session_scope() as session:
        job = Job(owner_id=owner_id, dataset_id=dataset_id, params=params, max_attempts=1)
        session.add(job)
        session.flush()
        return job.id


def test_the_default_job_runs_end_to_end(prod_env, start_worker):
    assert Settings.model_fields["train_views"].default == 2  # the default this test exists for
    owner, ds, truths = make_dataset(12)
    job_id = _default_job(owner, ds, 12)
    worker = start_worker(TAGSIFT_TRAIN_VIEWS=None)
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert job.params["method"] == "prompt_alignment" and job.params["loss"] == "pico"
    assert job.params["views"] is None  # the server's default was used
    encoding = next(e.data for e in events(job_id, "stage") if e.data["stage"] == "encoding")
    assert encoding["views"] == 2  # one clean + one augmented view: PiCO's weak and strong are distinct views
    epochs = [e.data for e in events(job_id, "epoch")]
    assert [e["epoch"] for e in epochs] == list(range(1, job.params["epochs"] + 1))
    with session_scope() as session:
        items = list(session.scalars(select(Item).where(Item.dataset_id == ds).order_by(Item.seq)))
    assert all(it.label in it.candidates and it.label_source == "model" for it in items)
    assert len(truths) == len(items)
