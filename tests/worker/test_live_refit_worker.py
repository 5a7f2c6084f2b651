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
        for k in range(6):  # a reviewer fixes two items of each colour; the refits coalesce
            r = client.patch(f"/items/{items[k].id}", json={"label": truths[k]}, headers=headers)
            assert r.status_code == 200, r.text

        def settled():
            refits = _refits(ds)
            return refits if refits and all(x.status not in ("queued", "running") for x in refits) else None

        refits = wait_for(settled, timeout=240, what="the live refits")
        refit = refits[-1]
        assert all(x.status == "succeeded" for x in refits), [(x.error_code, x.error) for x in refits]
        assert len(refits) <= 6 and refit.decision_seq == 6 and refit.reviewed_items == 6  # the last saw every one
        assert refits[0].base_model_id == job.model_id and refit.base_model_id == (
            refits[-2].model_id if len(refits) > 1 else job.model_id
        )
        with session_scope() as session:
            after = list(session.scalars(select(Item).where(Item.dataset_id == ds).order_by(Item.seq)))
        assert [it.label for it in after[:6]] == truths[:6] and {it.label_source for it in after[:6]} == {"reviewer"}
        revisions = {x.model_id for x in refits}
        assert all(it.model_id in revisions | {job.model_id} and it.label in it.candidates for it in after[6:])
        assert any(it.model_id in revisions for it in after[6:])  # the other items were retagged by a refit
        listed = client.get(f"/datasets/{ds}/refits", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json()["refits"][0]["model_id"] == refit.model_id
        assert listed.json()["live"]["applied"]["revision"] == refit.revision
        model = client.get(f"/models/{refit.model_id}", headers=headers)
        assert model.status_code == 200, model.text
        assert model.json()["job_id"] is None and model.json()["metrics"]["refit"]["of"] == refit.base_model_id
    assert "live@" in worker.log() or "tagsift.live" in worker.log()  # the live process took it, not the pool
