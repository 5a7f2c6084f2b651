"""No shared disk: the API and two workers, each with its own TAGSIFT_DATA_DIR, one PostgreSQL, one Redis and one
S3 server (SeaweedFS). Separate processes and folders; the only things they share are the three servers.

A job starts on worker 1, which is SIGKILLed mid-training; worker 2 resumes it from the checkpoint worker 1 put in
the object store; the API, which never had an image or a model on its disk, serves /predict and the export. And the
object store going down during a job fails it with a clear message and no half-written model.
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
import zipfile
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Item, Owner
from app.services.api_keys import create_api_key
from tests.conftest import s3_location, s3_settings
from tests.worker.conftest import (
    CLASSES,
    FAST_LEASES,
    SLOW_TEXT_CLIP,
    ApiServer,
    WorkerProcess,
    color_image,
    events,
    get_job,
    model_count,
    tiny_backbone,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "cancelled")
# 40 epochs of 12 steps: on an idle machine an epoch of this tiny model takes a fraction of a second, and worker 1
# must still be training when the test, polling every 20 ms, kills it after epoch 2 (6 epochs were all done once)
PARAMS = {"method": "coop", "loss": "rc", "epochs": 40, "batch_size": 2, "lr": 0.01, "n_ctx": 4, "seed": 7, "views": 2}


class Host:
    """One "machine": a data folder of its own and the process that runs there."""

    def __init__(self, root: Path, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.dir = root / name
        self.dir.mkdir(parents=True)
        self.env = {**env, "TAGSIFT_DATA_DIR": str(self.dir / "var")}
        # the backbone is installed on each worker machine (the same config file, so the same backbone id)
        self.env["TAGSIFT_BACKBONE"] = tiny_backbone(self.dir / "models", SLOW_TEXT_CLIP, "slow-text")
        self.log = self.dir / f"{name}.log"

    def files(self) -> list[Path]:
        return sorted(p for p in (self.dir / "var").rglob("*") if p.is_file())


def _cluster_env(postgres_url: str, redis_url: str, storage: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAGSIFT_", "AWS_"))}
    env.update(FAST_LEASES)
    env.update(storage)
    env.update(
        TAGSIFT_DATABASE_URL=postgres_url,
        TAGSIFT_BROKER_URL=redis_url,
        TAGSIFT_QUEUE=f"test-{uuid.uuid4().hex[:8]}",
        OMP_NUM_THREADS="1",
    )
    return env


def _upload(client: httpx.Client, n: int) -> dict:
    rows, files = [], []
    for i in range(n):
        color = CLASSES[i % 3]
        other = CLASSES[(i + 1 + i // 3 % 2) % 3]
        rows.append({"file": f"img{i}.png", "candidates": sorted({color, other})})
        files.append(("images", (f"img{i}.png", color_image(i, color), "image/png")))
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = client.post(
        "/datasets",
        data={"name": "no-shared-disk", "classes": json.dumps(CLASSES)},
        files=[("manifest", ("manifest.jsonl", manifest, "application/x-ndjson")), *files],
    )
    assert r.status_code == 201, r.text
    return r.json()


def _client(api: ApiServer) -> httpx.Client:
    with session_scope() as session:
        owner = Owner(name=f"owner-{uuid.uuid4().hex[:8]}")
        session.add(owner)
        session.flush()
        key = create_api_key(session=session, owner_name=owner.name)
    return httpx.Client(base_url=api.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_a_job_killed_on_one_worker_resumes_on_another_and_the_api_serves_the_model(
    tagsift_env, postgres_url, redis_url, s3_server, monkeypatch, tmp_path: Path
):
    storage = s3_settings(monkeypatch, s3_server)
    tagsift_env(database_url=postgres_url, broker_url=redis_url)  # this test reads the job rows
    env = _cluster_env(postgres_url, redis_url, storage)
    env["TAGSIFT_JOB_LEASE_SECONDS"] = "8"  # worker 2's run must keep its lease on a loaded machine
    bucket, prefix = s3_location(storage)
    api_host, host1, host2 = (Host(tmp_path, name, env) for name in ("api", "worker1", "worker2"))
    del api_host.env["TAGSIFT_BACKBONE"]
    api = ApiServer(api_host.log, api_host.env)
    worker1 = WorkerProcess(host1.log, host1.env)
    worker2 = None
    try:
        client = _client(api)
        dataset = _upload(client, 24)
        r = client.post(f"/datasets/{dataset['id']}/jobs", json=PARAMS, headers={"X-Request-ID": "nsd-1"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]

        # worker 1 trains; after epoch 2 its checkpoint is in the bucket (stored before the epoch is reported)
        wait_for(
            lambda: [e for e in events(job_id, "epoch") if e.data["epoch"] >= 2],
            180,
            "epoch 2 on worker 1",
            interval=0.02,
        )
        ckpt_key = f"{prefix}/jobs/{job_id}/ckpt.pt"
        assert ckpt_key in s3_server.keys(bucket, f"{prefix}/jobs/")
        worker1.kill()  # SIGKILL, the whole process group: nothing is cleaned up or acknowledged
        reported = len(events(job_id, "epoch"))
        done_on_1 = max(e.data["epoch"] for e in events(job_id, "epoch"))
        assert done_on_1 < PARAMS["epochs"] and get_job(job_id).status == "running"

        worker2 = WorkerProcess(host2.log, host2.env)  # another machine: nothing of worker 1's folder
        job = wait_status(job_id, FINISHED, timeout=240)
        assert job.status == "succeeded", (job.error_message, worker2.log()[-3000:])
        assert job.attempt == 2 and model_count(job_id) == 1
        runners = [e.data["runner"] for e in events(job_id, "attempt")]
        assert len(runners) == 2 and runners[0] != runners[1]
        # the request id of the POST reaches both attempts' events and every line worker 2 logged for the job, and
        # the API process (tagsift serve, its own logging configuration) logged the job and the request under it
        assert [e.data["request_id"] for e in events(job_id, "attempt")] == ["nsd-1", "nsd-1"]
        job_lines = [line for line in worker2.log().splitlines() if f"job_id={job_id}]" in line]
        assert job_lines and all("[request_id=nsd-1 " in line for line in job_lines), job_lines[:5]
        api_lines = [line for line in api_host.log.read_text().splitlines() if "[request_id=nsd-1 " in line]
        assert any(f" app.services.jobs [request_id=nsd-1 job_id=-] job {job_id} " in line for line in api_lines)
        access = [line for line in api_lines if " app.access " in line]
        assert len(access) == 1, api_lines
        assert f"method=POST path=/datasets/{dataset['id']}/jobs status=202" in access[0]
        # attempt 2 resumed from the stored checkpoint: its training stage says so, and its first epoch follows the
        # last one worker 1 finished (worker 2 never saw worker 1's disk)
        training = [e.data for e in events(job_id, "stage") if e.data["stage"] == "training"]
        assert [t["resumed"] for t in training] == [False, True]
        epochs = [e.data["epoch"] for e in events(job_id, "epoch")]
        assert epochs[:reported] == list(range(1, done_on_1 + 1))
        resumed = epochs[reported:]  # from the last stored checkpoint (one more, if the kill fell between the
        assert resumed[0] in (done_on_1 + 1, done_on_1 + 2), epochs  # upload and the epoch's event)
        assert resumed == list(range(resumed[0], PARAMS["epochs"] + 1)), epochs
        assert not (host2.dir / "var" / "blobs").exists()  # worker 2 read the images from the store's cache...
        assert list((host2.dir / "var" / "cache" / "blobs").rglob("*"))  # ...downloaded into its own folder
        assert ckpt_key not in s3_server.keys(bucket, f"{prefix}/jobs/")  # the finished job's checkpoint is gone
        # worker 1 stored every feature view it encoded; worker 2 found them all in the store (encoded nothing)
        assert len(s3_server.keys(bucket, f"{prefix}/features/")) == 24 * PARAMS["views"]
        assert f"48 of 48 feature views found in s3://{bucket}/{prefix}" in worker2.log()
        with session_scope() as session:
            labels = session.scalars(select(Item.label).where(Item.dataset_id == dataset["id"])).all()
        assert len(labels) == 24 and all(label in CLASSES for label in labels)

        # the API serves the model it never had on its disk
        model_id = job.model_id
        r = client.post(
            "/predict",
            data={"model_id": model_id},
            files=[("image", ("new.png", color_image(100, "red"), "image/png"))],
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] in CLASSES
        r = client.get(f"/models/{model_id}/export")
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            assert {"tower.onnx", "head.npz", "classes.json", "preprocess.json", "model_card.md"} <= set(zf.namelist())
            assert json.loads(zf.read("classes.json")) == CLASSES
    finally:
        api.stop()
        worker1.stop()
        if worker2 is not None:
            worker2.stop()
    # the API's folder holds no image and no model file: everything it served came from the object store
    leftover = api_host.files()
    assert not leftover, f"files in the API's data folder: {leftover[:10]}"


def test_the_object_store_down_during_a_job_fails_it_clearly_without_a_model(
    tagsift_env, postgres_url, redis_url, own_s3, monkeypatch, tmp_path: Path
):
    storage = s3_settings(monkeypatch, own_s3)
    tagsift_env(database_url=postgres_url, broker_url=redis_url)
    env = _cluster_env(postgres_url, redis_url, storage)
    api_host, host = Host(tmp_path, "api", env), Host(tmp_path, "worker", env)
    api = ApiServer(api_host.log, api_host.env)
    worker = WorkerProcess(host.log, host.env)
    try:
        client = _client(api)
        dataset = _upload(client, 12)
        r = client.post(f"/datasets/{dataset['id']}/jobs", json={**PARAMS, "epochs": 3})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_for(lambda: events(job_id, "epoch"), 180, "the first epoch")
        own_s3.stop(kill=True)  # the store dies mid-training: checkpoints and the model cannot be stored
        job = wait_status(job_id, FINISHED, timeout=180)
        assert job.status == "failed" and job.error_code == "storage_unavailable", (job.status, job.error_message)
        # the step that could not reach the store is named: storing the model, or, if a loaded machine let the run's
        # 4 s lease lapse and the job was re-run, fetching what the re-run needs
        assert re.match(
            rf"job {job_id}: (storing the model|fetching [a-z ]+): the object store did not answer for 4 s",
            job.error_message,
        ), job.error_message
        assert own_s3.endpoint in job.error_message
        assert model_count(job_id) == 0 and job.model_id is None  # no half-written model
        with session_scope() as session:
            labels = session.scalars(select(Item.label).where(Item.dataset_id == dataset["id"])).all()
        assert labels and all(label is None for label in labels)  # no labels from a model that was not stored
        # the epochs whose checkpoint could not be stored say so
        assert any("checkpoint_not_stored" in e.data for e in events(job_id, "epoch"))
        # back up, the store holds nothing of a model: a model's files are content-addressed blobs that only a model
        # row refers to, and there is none. The image tower may be named: it is the backbone's, not the model's, and
        # a CPU worker exports and stores it (whole, under its content address) before it encodes with ONNX Runtime
        # (worker.runtime.image_encoder), so every named tower points at a stored, complete blob.
        own_s3.start()
        bucket, prefix = s3_location(storage)
        for key in own_s3.keys(bucket, f"{prefix}/towers/"):
            named = json.loads(own_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
            sha = named["onnx_sha256"]
            assert own_s3.keys(bucket, f"{prefix}/blobs/{sha[:2]}/{sha[2:4]}/{sha}"), key
    finally:
        api.stop()
        worker.stop()
