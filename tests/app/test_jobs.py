"""Jobs against real PostgreSQL and Redis: create (defaults, validation, idempotency), read, events, cancel."""

from __future__ import annotations

import redis
from sqlalchemy import update

from app.db import session_scope
from app.job_defaults import METHOD_DEFAULTS
from app.models import Job
from tests.app.conftest import Api


def _set_status(job_id: str, **values) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_create_job_with_defaults_is_queued_and_enqueued(alice: Api) -> None:
    ds = alice.make_dataset(3)
    r = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 3})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    request_id = r.headers["x-request-id"]  # made by the API: the client sent none
    assert job["status"] == "queued" and job["type"] == "train" and job["dataset_id"] == ds["id"]
    # method "auto": the aligned head with its validated defaults (app/job_defaults.py)
    assert job["params"]["method"] == "aligned_head" and job["params"]["requested_method"] == "auto"
    assert job["params"]["loss"] == "rc" and job["params"]["mix"] == "trust"
    assert job["params"]["epochs"] == 3 and job["params"]["batch_size"] == 32
    assert job["params"]["lr"] == METHOD_DEFAULTS["aligned_head"]["lr"]
    assert job["params"]["n_ctx"] == 16 and job["params"]["seed"] == 1 and job["params"]["shots"] is None
    assert job["progress"] == {"stage": "queued", "epoch": 0, "epochs": 3, "fraction": 0.0}
    assert job["error"] is None and job["model_id"] is None and job["attempt"] == 0

    got = alice.get(f"/jobs/{job['id']}").json()
    assert got["id"] == job["id"] and got["status"] == "queued"
    # The message is on this test's Redis queue (nobody consumes it here).
    r = redis.Redis.from_url(alice.settings.broker_url)
    assert r.llen(alice.settings.queue) == 1
    events = alice.get(f"/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events["data"]] == ["stage"]
    queued = events["data"][0]["data"]
    assert {k: queued[k] for k in ("stage", "device", "queue")} == {
        "stage": "queued",
        "device": "auto",  # TAGSIFT_JOB_DEVICE's default: any worker
        "queue": alice.settings.queue,
    }
    assert queued["request_id"] == request_id


def test_job_params_are_validated_naming_the_field(alice: Api) -> None:
    ds = alice.make_dataset(2)
    url = f"/datasets/{ds['id']}/jobs"
    for body, field in [
        ({"method": "magic"}, "method"),
        ({"loss": "l2"}, "loss"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1}, "lr"),
        ({"shots": 0}, "shots"),
        ({"templates": ["no slot"]}, "templates"),
        ({"epoch": 3}, "epoch"),
        ({"graph_weight": 1.0}, "graph_weight"),
        ({"loss": "cc", "graph_weight": 0.5}, "graph_weight"),  # the graph propagates RC's confidences only
        ({"method": "coop", "mix": "trust"}, "mix"),  # CoOp has no handcrafted teacher to trust
    ]:
        r = alice.post(url, json=body)
        assert r.status_code == 422, body
        assert r.headers["content-type"].startswith("application/problem+json")
        assert any(e["field"].split(".")[0] == field for e in r.json()["errors"]), r.json()
    empty = alice.post("/datasets", json={"name": "e", "classes": ["a", "b"]}).json()
    r = alice.post(f"/datasets/{empty['id']}/jobs", json={})
    assert r.status_code == 409 and r.json()["code"] == "dataset_empty"


def test_idempotency_key_replays_or_refuses(alice: Api, bob: Api) -> None:
    ds = alice.make_dataset(2)
    url = f"/datasets/{ds['id']}/jobs"
    first = alice.post(url, json={"epochs": 5}, headers={"Idempotency-Key": "k-1"})
    again = alice.post(url, json={"epochs": 5}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    # Defaults are part of the fingerprint: an explicit default is the same request.
    same = alice.post(url, json={"epochs": 5, "method": "auto"}, headers={"Idempotency-Key": "k-1"})
    assert same.json()["id"] == first.json()["id"]
    other = alice.post(url, json={"epochs": 6}, headers={"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    fresh = alice.post(url, json={"epochs": 5}, headers={"Idempotency-Key": "k-2"})
    assert fresh.json()["id"] != first.json()["id"]
    # Keys are per owner: bob's k-1 on his own dataset is a new job.
    bob_ds = bob.make_dataset(2)
    assert bob.post(f"/datasets/{bob_ds['id']}/jobs", json={}, headers={"Idempotency-Key": "k-1"}).status_code == 202
    assert redis.Redis.from_url(alice.settings.broker_url).llen(alice.settings.queue) == 3


def test_cancel_semantics(alice: Api, bob: Api) -> None:
    ds = alice.make_dataset(2)
    url = f"/datasets/{ds['id']}/jobs"
    queued = alice.post(url, json={}).json()
    assert bob.post(f"/jobs/{queued['id']}/cancel").status_code == 404
    r = alice.post(f"/jobs/{queued['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert r.json()["error"]["code"] == "cancelled"
    assert alice.post(f"/jobs/{queued['id']}/cancel").status_code == 409

    running = alice.post(url, json={"epochs": 7}).json()
    _set_status(running["id"], status="running", attempt=1)
    r = alice.post(f"/jobs/{running['id']}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "running" and r.json()["cancel_requested"] is True

    done = alice.post(url, json={"epochs": 8}).json()
    _set_status(done["id"], status="succeeded")
    r = alice.post(f"/jobs/{done['id']}/cancel")
    assert r.status_code == 409 and r.json()["code"] == "job_finished"

    kinds = [e["data"].get("stage") for e in alice.get(f"/jobs/{running['id']}/events").json()["data"]]
    assert kinds == ["queued", "cancel_requested"]


def test_events_page_with_after_and_limit(alice: Api, bob: Api) -> None:
    from app.models import JobEvent

    ds = alice.make_dataset(2)
    job = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 4}).json()
    with session_scope() as session:
        for epoch in range(1, 5):
            session.add(JobEvent(job_id=job["id"], kind="epoch", data={"epoch": epoch, "epochs": 4, "loss": 1 / epoch}))
    page = alice.get(f"/jobs/{job['id']}/events", params={"limit": 2}).json()
    assert [e["kind"] for e in page["data"]] == ["stage", "epoch"] and page["has_more"] is True
    rest = alice.get(f"/jobs/{job['id']}/events", params={"after": page["next_after"]}).json()
    assert [e["data"]["epoch"] for e in rest["data"]] == [2, 3, 4] and rest["has_more"] is False
    tail = alice.get(f"/jobs/{job['id']}/events", params={"after": rest["next_after"]}).json()
    assert tail["data"] == [] and tail["next_after"] == rest["next_after"]
    assert bob.get(f"/jobs/{job['id']}/events").status_code == 404
    assert bob.get(f"/jobs/{job['id']}").status_code == 404


def test_broker_down_keeps_the_job_queued(alice: Api, tagsift_env) -> None:
    ds = alice.make_dataset(2)
    tagsift_env(broker_url="redis://127.0.0.1:1/0")  # nothing listens there
    r = alice.post(f"/datasets/{ds['id']}/jobs", json={})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    events = alice.get(f"/jobs/{r.json()['id']}/events").json()["data"]
    assert events[-1]["kind"] == "error" and events[-1]["data"]["code"] == "broker_unavailable"
    assert alice.client.get("/readyz").status_code == 503


def test_concurrent_requests_with_one_idempotency_key_make_one_job(alice: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ds = alice.make_dataset(2)

    def create(_: int):
        return alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 2}, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(create, range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1


def test_device_picks_the_queue_and_defaults_from_the_settings(alice: Api, tagsift_env) -> None:
    ds = alice.make_dataset(3)
    r = redis.Redis.from_url(alice.settings.broker_url)
    job = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 1, "device": "gpu"}).json()
    assert job["params"]["device"] == "gpu"
    assert r.llen(alice.settings.gpu_queue) == 1 and r.llen(alice.settings.queue) == 0
    job = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 1, "device": "cpu"}).json()
    assert job["params"]["device"] == "cpu" and r.llen(alice.settings.cpu_queue) == 1
    bad = alice.post(f"/datasets/{ds['id']}/jobs", json={"device": "tpu"})
    assert bad.status_code == 422 and "device" in bad.text
    settings = tagsift_env(job_device="gpu")  # the API's default for requests that name no device
    job = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 2}).json()
    assert job["params"]["device"] == "gpu" and r.llen(settings.gpu_queue) == 2
