"""A live refit end to end on the embedded default (SQLite, the SQLite broker, the file store): a job trained by a
real ``tagsift worker``, a reviewer's decision through the API, and the refit run by the light live process that
``tagsift worker`` starts beside its pool: the other items are retagged by the new model revision, which the API
serves and lists."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import session_scope
from app.main import create_app
from app.models import Dataset, Item, Owner, Refit
from app.queue import TRAIN_TASK, enqueue
from app.services.api_keys import create_api_key
from tests.worker.conftest import make_dataset, make_job, wait_for, wait_status

pytestmark = pytest.mark.integration


def _key(owner_id: str) -> str:
    with session_scope() as session:
        name = session.get(Owner, owner_id).name
    with session_scope() as session:
        return create_api_key(session=session, owner_name=name)


def _refits(dataset_id: str) -> list[Refit]:
    with session_scope() as session:
        return list(session.scalars(select(Refit).where(Refit.dataset_id == dataset_id).order_by(Refit.revision)))


def test_a_decision_through_the_api_retags_the_other_items_on_the_live_worker(embedded_env, start_worker):
    owner, ds, truths = make_dataset(12)
    job_id = make_job(owner, ds)
    worker = start_worker(TAGSIFT_JOB_LEASE_SECONDS="60")
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    with session_scope() as session:
        items = list(session.scalars(select(Item).where(Item.dataset_id == ds).order_by(Item.seq)))
    assert all(it.model_id == job.model_id for it in items)
    with session_scope() as session:  # the job's save wrote the dataset's quality report
        assert session.get(Dataset, ds).quality == job.metrics["quality"] is not None

    headers = {"Authorization": f"Bearer {_key(owner)}"}
    with TestClient(create_app()) as client:
        r = client.patch(f"/items/{items[0].id}", json={"label": truths[0]}, headers=headers)
        assert r.status_code == 200, r.text
        refit = wait_for(
            lambda: next((x for x in _refits(ds) if x.status not in ("queued", "running")), None),
            timeout=180,
            what="the live refit",
        )
        assert refit.status == "succeeded", (refit.error_code, refit.error, worker.log()[-3000:])
        assert refit.reviewed_items == 1 and refit.decision_seq == 1 and refit.base_model_id == job.model_id
        with session_scope() as session:
            after = list(session.scalars(select(Item).where(Item.dataset_id == ds).order_by(Item.seq)))
        assert after[0].label == truths[0] and after[0].label_source == "reviewer"
        assert all(it.model_id in (refit.model_id, job.model_id) and it.label in it.candidates for it in after[1:])
        assert any(it.model_id == refit.model_id for it in after[1:])  # retagged (or unchanged within tolerance)
        listed = client.get(f"/datasets/{ds}/refits", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json()["refits"][0]["model_id"] == refit.model_id
        assert listed.json()["live"]["applied"]["revision"] == refit.revision
        model = client.get(f"/models/{refit.model_id}", headers=headers)
        assert model.status_code == 200, model.text
        assert model.json()["job_id"] is None and model.json()["metrics"]["refit"]["of"] == job.model_id
    assert "live@" in worker.log() or "tagsift.live" in worker.log()  # the live process took it, not the pool
