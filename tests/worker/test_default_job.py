"""The job a user gets with no parameters: default views (TAGSIFT_TRAIN_VIEWS unset), method ``auto`` resolved as the
API resolves it (the aligned head at every size), run by a real worker process end to end; the default of an explicit
``prompt_alignment`` (PiCO on two distinct views); and the quality report a job carries on ``GET /jobs/{id}`` and in
the model card, with and without held-out certain items."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.config import Settings
from app.db import session_scope
from app.job_defaults import METHOD_DEFAULTS, resolve_job_params
from app.main import create_app
from app.models import Dataset, Item, Job, Model
from app.queue import TRAIN_TASK, enqueue
from app.schemas import JobCreate
from app.services.api_keys import create_api_key
from app.storage import get_storage
from tests.worker.conftest import CLASSES, events, make_dataset, wait_status

pytestmark = pytest.mark.integration


def _default_job(owner_id: str, dataset_id: str, items: int, **overrides) -> str:
    params = resolve_job_params(JobCreate(**overrides).model_dump(), items=items, classes=len(CLASSES))
    with session_scope() as session:
        job = Job(owner_id=owner_id, dataset_id=dataset_id, params=params, max_attempts=1)
        session.add(job)
        session.flush()
        return job.id


def _get_job(owner_id: str, job_id: str) -> dict:
    """``GET /jobs/{id}`` through the real app, as the dataset's owner."""
    from app.models import Owner

    with session_scope() as session:
        name = session.get(Owner, owner_id).name
    with session_scope() as session:
        key = create_api_key(session=session, owner_name=name)
    with TestClient(create_app()) as client:
        r = client.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def _items(dataset_id: str) -> list[Item]:
    with session_scope() as session:
        return list(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)))


def _card(job_id: str) -> str:
    with session_scope() as session:
        model = session.scalars(select(Model).where(Model.job_id == job_id)).one()
        return get_storage().get(model.artifacts["model_card.md"]).decode()


def test_the_default_job_runs_end_to_end(prod_env, start_worker):
    assert Settings.model_fields["train_views"].default == 2  # the default this test exists for
    owner, ds, truths = make_dataset(12)
    job_id = _default_job(owner, ds, 12)
    worker = start_worker(TAGSIFT_TRAIN_VIEWS=None, TAGSIFT_JOB_LEASE_SECONDS="60")
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert job.params["method"] == "aligned_head" and job.params["loss"] == "rc"
    assert {k: job.params[k] for k in METHOD_DEFAULTS["aligned_head"]} == METHOD_DEFAULTS["aligned_head"]
    assert job.params["views"] is None  # the server's default was used
    encoding = next(e.data for e in events(job_id, "stage") if e.data["stage"] == "encoding")
    assert encoding["views"] == 2  # one clean + one augmented view
    assert encoding["encoder"] == "onnxruntime"  # TAGSIFT_ENCODER=auto on a CPU worker
    towers = list((prod_env.model_cache_dir / "towers").glob("*/tower.onnx"))  # exported once, into the model cache
    assert len(towers) == 1 and get_storage().download(f"towers/{towers[0].parent.name}.json")  # and stored
    epochs = [e.data for e in events(job_id, "epoch")]
    assert [e["epoch"] for e in epochs] == list(range(1, job.params["epochs"] + 1))
    items = _items(ds)
    assert all(it.label in it.candidates and it.label_source == "model" for it in items)
    assert len(truths) == len(items)

    # the quality report, without a single known tag: estimated by consistency with the candidate sets, checked
    # against the truth (12 items: a wide interval, but it must hold the true share), and it says it is not measured
    got = _get_job(owner, job_id)
    quality = got["quality"]
    assert "quality" not in got["metrics"] and "train_acc" not in got["metrics"]
    est = quality["estimate"]
    assert (
        est["basis"] == "consistency"
        and quality["holdout"] is None
        and quality["estimated_accuracy"] == est["accuracy"]
    )
    assert quality["warnings"] and "audit of 12 randomly drawn items" in est["warning"]
    assert quality["certain_items"] == 0 and quality["model_labelled_items"] == 12
    true = sum(it.label == truths[it.seq] for it in items) / len(items)
    assert est["ci95"][0] <= true <= est["ci95"][1] and abs(est["accuracy"] - true) <= 0.3, (est, true)
    per_epoch = quality["epochs"]
    assert [e["epoch"] for e in per_epoch] == [e["epoch"] for e in epochs]
    assert all(e["pll_loss"] > 0 and e["align_loss"] > 0 for e in per_epoch)  # aligned head: both terms
    assert per_epoch[0]["label_churn"] is None and all(0 <= e["label_churn"] <= 1 for e in per_epoch[1:])
    review = got["metrics"]["review_confidence"]
    assert all(it.needs_review == (it.confidence < review) for it in items)
    assert quality["needs_review"] == sum(it.needs_review for it in items)
    with session_scope() as session:  # the job's save keeps the dataset's counts (the item lists' totals) exact
        dataset = session.get(Dataset, ds)
        assert (dataset.item_count, dataset.review_count) == (12, sum(it.needs_review for it in items))
    assert "Label quality" in _card(job_id) and "Estimated share of correct labels" in _card(job_id)


def test_explicit_prompt_alignment_gets_pico_on_distinct_views(prod_env, start_worker):
    """The default of ``method="prompt_alignment"`` (PiCO, its measured best), with the server's default views."""
    owner, ds, _ = make_dataset(12)
    job_id = _default_job(owner, ds, 12, method="prompt_alignment", epochs=2)
    worker = start_worker(TAGSIFT_TRAIN_VIEWS=None, TAGSIFT_JOB_LEASE_SECONDS="60")
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert job.params["method"] == "prompt_alignment" and job.params["loss"] == "pico"
    encoding = next(e.data for e in events(job_id, "stage") if e.data["stage"] == "encoding")
    assert encoding["views"] == 2  # one clean + one augmented view: PiCO's weak and strong are distinct views
    assert all(it.label in it.candidates for it in _items(ds))


def test_certain_items_are_right_but_never_the_yardstick(prod_env, start_worker):
    """60 items with a manifest tag (two candidates each): certain, so right, but not a random sample: nothing is held
    out of training for them and the estimate of the 12 others rests on consistency with their candidate sets."""
    owner, ds, truths = make_dataset(72)
    with session_scope() as session:
        for seq in range(60):
            session.execute(update(Item).where(Item.dataset_id == ds, Item.seq == seq).values(given_label=truths[seq]))
    job_id = _default_job(owner, ds, 72, method="coop", loss="rc", epochs=3, n_ctx=4, lr=0.01)
    worker = start_worker(TAGSIFT_TRAIN_VIEWS=None, TAGSIFT_JOB_LEASE_SECONDS="60")
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    training = next(e.data for e in events(job_id, "stage") if e.data["stage"] == "training")
    assert training["holdout_items"] == 0
    quality = _get_job(owner, job_id)["quality"]
    est = quality["estimate"]
    assert quality["holdout"] is None and est["basis"] == "consistency" and est["audited_items"] == 0
    assert quality["certain_items"] == est["certain_items"] == 60 and est["model_labelled_items"] == 12
    assert all(e["holdout_acc"] is None and e["align_loss"] is None for e in quality["epochs"])  # coop, no audit
    items = _items(ds)
    assert all(it.label == truths[it.seq] and it.confidence == pytest.approx(1.0) for it in items[:60])
    true = sum(it.label == truths[it.seq] for it in items) / 72
    assert est["ci95"][0] <= true <= est["ci95"][1] and abs(est["accuracy"] - true) <= 0.1, (est, true)
    assert "Estimated share of correct labels" in _card(job_id)
