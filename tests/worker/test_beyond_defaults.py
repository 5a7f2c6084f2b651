"""A linear-probe job with the benchmark's beyond-the-paper defaults: kNN-pruned candidate sets and the handcrafted
classifier mixed in at inference, through a real worker process; the exported tower + head is the mixed classifier."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.imaging import PreprocessConfig, open_image, preprocess
from app.models import Item, Model
from app.queue import TRAIN_TASK, enqueue
from app.storage import get_storage
from app.towers import Head
from tests.worker.conftest import make_dataset, make_job, wait_status

pytestmark = pytest.mark.integration


def test_linear_probe_job_with_knn_vote_and_handcrafted_mix(prod_env, start_worker):
    owner, ds, _ = make_dataset(12)
    job_id = make_job(
        owner, ds, method="linear_probe", lr=1.0, epochs=3, knn_vote=True, knn_k=3, knn_tau=0.5, handcrafted_mix=0.5
    )
    worker = start_worker()
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout=120)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    knn = job.metrics["knn_vote"]
    assert knn["k"] == 3 and knn["mean_set_after"] <= knn["mean_set_before"]
    assert job.metrics["handcrafted_mix"] == 0.5

    with session_scope() as session:
        model = session.scalars(select(Model).where(Model.job_id == job_id)).one()
        items = list(session.scalars(select(Item).where(Item.dataset_id == ds).order_by(Item.seq)))
    storage = get_storage()
    classes = json.loads(storage.get(model.artifacts["classes.json"]))
    cfg = PreprocessConfig.from_dict(json.loads(storage.get(model.artifacts["preprocess.json"])))
    sess = ort.InferenceSession(str(storage.local_path(model.artifacts["tower.onnx"])))
    head = Head.from_npz(storage.get(model.artifacts["head.npz"]))
    # the stored labels are the exported (mixed) classifier's argmax over each item's own candidates
    for item in items:
        x = preprocess(open_image(storage.get(item.sha256)), cfg)[None].astype(np.float32)
        logits = head.logits(sess.run(["features"], {"image": x})[0])[0]
        allowed = [classes.index(c) for c in item.candidates]
        assert classes[max(allowed, key=lambda k: logits[k])] == item.label
