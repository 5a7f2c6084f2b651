"""A re-run whose epoch checkpoint no longer matches (items added between attempts, other params) restarts training.

Real PostgreSQL + Redis and a real ``tagsift worker`` process: the job looks like a run whose worker died after
writing a checkpoint for a smaller dataset; the reaper re-enqueues it, the re-run deletes the stale checkpoint,
records why, and trains from epoch 1 to success.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import update

from app.db import session_scope
from app.models import Job
from ml.pipeline import is_stale_checkpoint_error
from tests.worker.conftest import CLASSES, TINY_CLIP, events, make_dataset, make_job, model_count, wait_status
from worker.leases import utcnow
from worker.training import STALE_CHECKPOINT_REASON

pytestmark = pytest.mark.integration


def _stale_checkpoint(path: Path, n_items: int) -> None:
    from ml.train import CHECKPOINT_VERSION

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"shape": (1, n_items, TINY_CLIP["embed_dim"], len(CLASSES)), "classnames": list(CLASSES), "config": {}}
    torch.save({"version": CHECKPOINT_VERSION, "meta": meta, "epoch": 2, "history": []}, path)


def test_fit_rejects_a_stale_checkpoint_with_the_error_the_worker_recognises(tmp_path):
    from ml.backbone import load_backbone
    from ml.train import TrainConfig, fit
    from tests.worker.conftest import tiny_backbone

    backbone = load_backbone(tiny_backbone(tmp_path), device="cpu")
    ckpt = tmp_path / "ckpt.pt"
    _stale_checkpoint(ckpt, n_items=4)
    feats = torch.randn(1, 6, backbone.embed_dim)
    mask = torch.ones(6, len(CLASSES), dtype=torch.bool)
    cfg = TrainConfig(method="coop", epochs=1, n_ctx=2, batch_size=4)
    with pytest.raises(ValueError) as info:
        fit(backbone, feats, mask, CLASSES, cfg, checkpoint_path=ckpt)
    assert is_stale_checkpoint_error(info.value)
    assert not is_stale_checkpoint_error(ValueError("item 3: empty candidate set"))


def test_rerun_with_stale_checkpoint_restarts_from_epoch_1(prod_env, start_worker):
    owner, ds, _ = make_dataset(6)
    job_id = make_job(owner, ds, epochs=3)
    ckpt = prod_env.data_dir / "jobs" / job_id / "ckpt.pt"
    _stale_checkpoint(ckpt, n_items=4)  # attempt 1 checkpointed 4 items; 2 were added before the re-run
    with session_scope() as session:  # attempt 1's worker died: its lease expired long ago
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status="running", attempt=1, lease_owner="gone:1:x", lease_expires_at=utcnow() - timedelta(1))
        )
    worker = start_worker()  # no message: the reaper finds the expired lease and re-enqueues the job
    job = wait_status(job_id, ("succeeded", "failed"), timeout=90)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert job.attempt == 2 and model_count(job_id) == 1
    discarded = events(job_id, "checkpoint")
    assert len(discarded) == 1 and discarded[0].data["reason"] == STALE_CHECKPOINT_REASON
    assert discarded[0].data["action"] == "discarded" and "different data or config" in discarded[0].data["detail"]
    training = [e.data for e in events(job_id, "stage") if e.data["stage"] == "training"]
    assert [t["resumed"] for t in training] == [True]  # a checkpoint was there ...
    assert [e.data["epoch"] for e in events(job_id, "epoch")] == [1, 2, 3]  # ... but training started over
    assert not ckpt.parent.exists()
