"""End to end, the user's way: real CIFAR-10 photos through the HTTP API, a real worker process, the reference backbone.

PostgreSQL + Redis (the production configuration), the API in-process (``TestClient``), one ``tagsift worker``
process with ``TAGSIFT_BACKBONE=reference``: upload 10 classes x 10 photos with three candidate tags each (the true
one and two others), start a job, poll it to success, read the labels (far better than picking a candidate at
random), export the model and predict new photos with it.
"""

from __future__ import annotations

import io
import json
import os
import random
import time
import zipfile

import pytest

from tests.ml.reference_fixtures import REFERENCE_CACHE_DIR, cifar10_path, reference_build, reference_cache_dir  # noqa: F401
from tests.worker.conftest import FAST_LEASES, WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PER_CLASS = 10
HELD_OUT = 2  # per class, for /predict
CANDIDATES = 3


@pytest.fixture
def api(prod_env, tagsift_env):
    settings = tagsift_env(
        database_url=prod_env.database_url,
        broker_url=prod_env.broker_url,
        queue=prod_env.queue,
        backbone="reference",
        model_cache_dir=str(REFERENCE_CACHE_DIR),
    )
    from fastapi.testclient import TestClient

    from app.db import session_scope
    from app.main import create_app
    from app.services.api_keys import create_api_key

    with session_scope() as session:
        key = create_api_key(session=session, owner_name=f"e2e-{time.time_ns()}")
    with TestClient(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client, settings


def test_cifar10_reference_backbone_end_to_end(api, cifar10_path, reference_build, tmp_path):  # noqa: F811
    from bench.data import load_cifar10

    client, settings = api
    data = load_cifar10(cifar10_path, "test", per_class=PER_CLASS + HELD_OUT, seed=0)  # one pass over the archive
    classes = list(data.classnames)
    rng = random.Random(0)
    seen: dict[int, int] = {}
    upload, held_out = [], []
    for image, label in zip(data.images, data.labels.tolist(), strict=True):
        seen[label] = seen.get(label, 0) + 1
        (upload if seen[label] <= PER_CLASS else held_out).append((image, label))
    manifest, files, truth = [], [], {}
    for i, (image, label) in enumerate(upload):
        name = f"img{i:03d}.jpg"
        true = classes[label]
        others = rng.sample([c for c in classes if c != true], CANDIDATES - 1)
        manifest.append({"file": name, "candidates": sorted([true, *others])})
        files.append(("images", (name, image, "image/jpeg")))
        truth[name] = true
    jsonl = "".join(json.dumps(m) + "\n" for m in manifest).encode()

    worker = WorkerProcess(tmp_path / "worker.log", {**os.environ, **FAST_LEASES, "TAGSIFT_JOB_LEASE_SECONDS": "60"})
    try:
        res = client.post(
            "/datasets",
            data={"name": "cifar10-e2e", "classes": json.dumps(classes)},
            files=[("manifest", ("manifest.jsonl", jsonl, "application/x-ndjson")), *files],
        )
        assert res.status_code == 201, res.text
        dataset = res.json()
        assert dataset["added"] == len(manifest)

        params = {"method": "prompt_alignment", "epochs": 10, "batch_size": 32, "n_ctx": 4, "lr": 0.002, "views": 1}
        res = client.post(f"/datasets/{dataset['id']}/jobs", json=params)
        assert res.status_code == 202, res.text
        job = res.json()
        deadline = time.monotonic() + 400  # a deadline, not a speed goal: a loaded 2-core machine took over 200 s
        while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(1)
            job = client.get(f"/jobs/{job['id']}").json()
        assert job["status"] == "succeeded", (job, worker.log()[-4000:])
        assert job["progress"]["fraction"] == 1.0 and job["model_id"]
    finally:
        worker.stop()

    labels = client.get(f"/datasets/{dataset['id']}/labels").json()["items"]
    assert len(labels) == len(manifest)
    assert all(r["label"] in r["candidates"] and r["label_source"] == "model" for r in labels)
    accuracy = sum(r["label"] == truth[r["file"]] for r in labels) / len(labels)
    chance = 1 / CANDIDATES
    assert accuracy >= chance + 0.3, f"label accuracy {accuracy:.2f} vs {chance:.2f} by picking a candidate at random"
    quality = job["quality"]  # no known tags here: estimated by consistency with the candidate sets, and it says so
    est = quality["estimate"]
    print(f"e2e: label accuracy {accuracy:.3f}, estimated {est['accuracy']:.3f} {est['ci95']} ({est['basis']})")
    assert est["basis"] == "consistency" and quality["holdout"] is None and quality["warnings"]
    # against the truth on real photos (the old candidate-likelihood fit said 85.3% for 73% right here; this one
    # 63.2% [50.8, 75.5]): on 100 items the consistency interval is about +-12 points, hence the tolerance
    assert est["ci95"][0] <= accuracy <= est["ci95"][1] and abs(est["accuracy"] - accuracy) <= 0.15, (est, accuracy)

    res = client.get(f"/models/{job['model_id']}/export")
    assert res.status_code == 200, res.text
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        assert {"tower.onnx", "head.npz", "classes.json", "preprocess.json", "model_card.md"} <= set(zf.namelist())
        assert json.loads(zf.read("classes.json")) == classes
        assert "not CLIP" in zf.read("model_card.md").decode()

    res = client.post(
        "/predict",
        data={"model_id": job["model_id"]},
        files=[("image", (f"new{i}.jpg", img, "image/jpeg")) for i, (img, _) in enumerate(held_out)],
    )
    assert res.status_code == 200, res.text
    predictions = res.json()["predictions"]
    assert len(predictions) == len(held_out) and all(p["label"] in classes for p in predictions)
    hits = sum(p["label"] == classes[t] for p, (_, t) in zip(predictions, held_out, strict=True))
    assert hits / len(predictions) > 1 / len(classes)  # better than chance over all 10 classes
