"""Encoding spread over workers (``worker.shards``) with real ``tagsift worker`` processes on PostgreSQL + Redis (and
once on the embedded SQLite default): two workers share a job's shards and the features equal one worker's; a
shard whose worker is SIGKILLed is encoded by another; a cancel stops every worker's encoding; a re-run after the
job's own worker died encodes only what the first run left, and ends with the one-worker features and labels."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app.config import Settings
from app.db import session_scope
from app.models import EncodeShard, Item, Job
from app.queue import TRAIN_TASK, enqueue
from tests.worker.conftest import (
    SLOW_IMAGE_CLIP,
    events,
    get_job,
    make_dataset,
    make_job,
    model_count,
    tiny_backbone,
    wait_for,
    wait_status,
)
from worker.shards import plan

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "cancelled")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
#: Two views per image (one augmented): the shards carry views and the augmentation seed too.
PARAMS = {"method": "coop", "loss": "rc", "epochs": 2, "batch_size": 8, "lr": 0.01, "n_ctx": 4, "seed": 3, "views": 2}


def _features(data_dir: Path) -> dict[str, bytes]:
    root = data_dir / "features"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.npy"))}


def _close(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    import io

    import numpy as np

    assert got.keys() == want.keys()
    worst = max(float(np.abs(np.load(io.BytesIO(got[k])) - np.load(io.BytesIO(want[k]))).max()) for k in got)
    assert worst < 1e-5, f"features differ by up to {worst}"


def _labels(dataset_id: str) -> list[tuple[str, float, float]]:
    with session_scope() as session:
        rows = session.execute(
            select(Item.label, Item.confidence, Item.margin).where(Item.dataset_id == dataset_id).order_by(Item.seq)
        ).all()
    return [tuple(r) for r in rows]


def _shards_event(job_id: str) -> dict:
    found = events(job_id, "shards")
    assert found, f"job {job_id} recorded no shards event"
    return found[-1].data


def _rows(job_id: str, **where) -> list[EncodeShard]:
    with session_scope() as session:
        q = select(EncodeShard).where(EncodeShard.job_id == job_id)
        for key, value in where.items():
            q = q.where(getattr(EncodeShard, key) == value)
        return list(session.scalars(q.order_by(EncodeShard.seq)))


def _pid(runner: str) -> int:
    return int(runner.split(":")[1])


def _started(worker) -> None:
    wait_for(lambda: " ready." in worker.log(), 120, "the worker to be ready")


def test_plan_groups_by_views_in_item_order_and_skips_cached_images() -> None:
    needs = [("a", 2), ("b", 1), ("c", 2), ("d", 2), ("e", 1)]
    cached = {("c", 0), ("c", 1), ("d", 0)}
    shards = plan(needs, lambda sha, v: (sha, v) not in cached, 2)
    assert shards == [(2, ["a", "d"]), (1, ["b", "e"])]
    assert plan(needs, lambda sha, v: True, 1) == [(2, ["a"]), (2, ["c"]), (2, ["d"]), (1, ["b"]), (1, ["e"])]


def test_two_workers_share_a_jobs_shards_and_the_features_equal_one_workers(prod_env, start_worker):
    """The defaults (128 images per shard, batches of 64, 2 decode threads): 300 images, 3 shards."""
    for name, default in (("encode_shard_images", 128), ("encode_batch_size", 64), ("decode_threads", 2)):
        assert Settings.model_fields[name].default == default and getattr(prod_env, name) == default
    n = 300
    slow = tiny_backbone(prod_env.data_dir, SLOW_IMAGE_CLIP, "slow-image")
    owner, first_ds, _ = make_dataset(n)
    _, second_ds, _ = make_dataset(n, owner_id=owner)  # the same images and candidate sets
    first = make_job(owner, first_ds, **PARAMS)  # the second job is made later: a worker's reaper sends queued jobs

    one = start_worker(TAGSIFT_BACKBONE=slow, **ONE_THREAD)
    enqueue(TRAIN_TASK, first)
    job = wait_status(first, FINISHED, timeout=240)
    assert job.status == "succeeded", (job.error_message, one.log()[-3000:])
    alone = _shards_event(first)
    assert (alone["shards"], alone["images"], alone["cached_images"], alone["views"]) == (3, n, 0, [2])
    assert list(alone["encoded_by"].values()) == [3] and _pid(next(iter(alone["encoded_by"]))) == one.proc.pid
    reference, reference_labels = _features(prod_env.data_dir), _labels(first_ds)
    assert len(reference) == 2 * n
    assert _rows(first) == []  # the rows go with the job's end

    shutil.rmtree(prod_env.data_dir / "features")  # cold again: the second job encodes the same images anew
    other = start_worker(TAGSIFT_BACKBONE=slow, **ONE_THREAD)
    _started(other)
    second = make_job(owner, second_ds, **PARAMS)
    enqueue(TRAIN_TASK, second)
    job = wait_status(second, FINISHED, timeout=240)
    assert job.status == "succeeded", (job.error_message, one.log()[-3000:], other.log()[-3000:])
    shared = _shards_event(second)
    assert shared["shards"] == 3 and shared["images"] == n and shared["retaken"] == 0
    assert {_pid(r) for r in shared["encoded_by"]} == {one.proc.pid, other.proc.pid}, shared
    assert sum(shared["encoded_by"].values()) == 3
    assert _features(prod_env.data_dir) == reference  # byte for byte: every view of every image
    assert _labels(second_ds) == reference_labels
    print(f"\n[shards] one worker: {alone}\n[shards] two workers: {shared}")


def test_a_shard_whose_worker_is_killed_is_encoded_by_another(prod_env, start_worker):
    n = 300
    slow = tiny_backbone(prod_env.data_dir, SLOW_IMAGE_CLIP, "slow-image")
    owner, ds, _ = make_dataset(n)
    job_id = make_job(owner, ds, **PARAMS)
    workers = [start_worker(TAGSIFT_BACKBONE=slow, **ONE_THREAD) for _ in range(2)]
    for w in workers:
        _started(w)
    enqueue(TRAIN_TASK, job_id)

    def helper_shard():
        runner = get_job(job_id).lease_owner
        return next((s for s in _rows(job_id, status="running") if runner and s.lease_owner != runner), None)

    shard = wait_for(helper_shard, 120, "another worker to encode a shard", interval=0.05)
    victim = next(w for w in workers if w.proc.pid == _pid(shard.lease_owner))
    victim.kill()
    job = wait_status(job_id, FINISHED, timeout=240)
    survivor = next(w for w in workers if w is not victim)
    assert job.status == "succeeded", (job.error_message, survivor.log()[-3000:])
    assert job.attempt == 1 and model_count(job_id) == 1
    event = _shards_event(job_id)
    assert event["retaken"] >= 1 and event["shards"] == 3
    by_pid = {_pid(r): count for r, count in event["encoded_by"].items()}
    assert set(by_pid) <= {survivor.proc.pid, victim.proc.pid} and by_pid[survivor.proc.pid] >= 2, event
    assert len(_features(prod_env.data_dir)) == 2 * n
    print(f"\n[shards] worker {victim.proc.pid} SIGKILLed inside shard {shard.seq}; {event}")


def test_cancel_stops_every_workers_encoding(prod_env, start_worker):
    n = 300
    slow = tiny_backbone(prod_env.data_dir, SLOW_IMAGE_CLIP, "slow-image")
    owner, ds, _ = make_dataset(n)
    job_id = make_job(owner, ds, **PARAMS)
    workers = [start_worker(TAGSIFT_BACKBONE=slow, **ONE_THREAD) for _ in range(2)]
    for w in workers:
        _started(w)
    enqueue(TRAIN_TASK, job_id)
    wait_for(lambda: len(_rows(job_id, status="running")) == 2, 120, "both workers to encode a shard", interval=0.05)
    t0 = time.monotonic()
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    job = wait_status(job_id, FINISHED, timeout=60)
    assert job.status == "cancelled" and model_count(job_id) == 0
    assert "training" not in [e.data["stage"] for e in events(job_id, "stage")]
    helper = next(w for w in workers if w.proc.pid != _pid(job.lease_owner))
    wait_for(lambda: "stopped (job over)" in helper.log(), 30, "the helper to stop its shard")
    latency = time.monotonic() - t0
    assert len(_features(prod_env.data_dir)) < 2 * n
    assert _rows(job_id) == []
    assert all(w.proc.poll() is None for w in workers)
    print(f"\n[shards] cancel: both workers stopped encoding within {latency:.1f} s")


def test_a_rerun_encodes_only_what_the_lost_run_left(prod_env, start_worker):
    """The job's own worker dies after a shard is done; the re-run (attempt 2, on another worker) plans only the
    images still missing, and ends with the features and labels of an uninterrupted one-worker run."""
    n, size = 240, 48
    slow = tiny_backbone(prod_env.data_dir, SLOW_IMAGE_CLIP, "slow-image")
    env = {"TAGSIFT_BACKBONE": slow, "TAGSIFT_ENCODE_SHARD_IMAGES": str(size), **ONE_THREAD}
    owner, ref_ds, _ = make_dataset(n)
    _, ds, _ = make_dataset(n, owner_id=owner)
    reference = make_job(owner, ref_ds, **PARAMS)
    first = start_worker(**env)
    enqueue(TRAIN_TASK, reference)
    assert wait_status(reference, FINISHED, timeout=240).status == "succeeded", first.log()[-3000:]
    ref_features, ref_labels = _features(prod_env.data_dir), _labels(ref_ds)
    shutil.rmtree(prod_env.data_dir / "features")

    job_id = make_job(owner, ds, **PARAMS)
    enqueue(TRAIN_TASK, job_id)
    wait_for(lambda: _rows(job_id, status="done"), 120, "a shard to be done", interval=0.02)
    first.kill()
    done = len(_features(prod_env.data_dir)) // 2
    second = start_worker(**env)
    job = wait_status(job_id, FINISHED, timeout=240)
    assert job.status == "succeeded", (job.error_message, second.log()[-3000:])
    assert job.attempt == 2 and model_count(job_id) == 1
    rerun = _shards_event(job_id)
    assert rerun["cached_images"] >= max(size, done - 1) and rerun["images"] == n - rerun["cached_images"]
    assert list(rerun["encoded_by"]) and all(_pid(r) == second.proc.pid for r in rerun["encoded_by"])
    # attempt 2 encodes the rest in other batches than the reference did: equal within float rounding
    _close(_features(prod_env.data_dir), ref_features)
    labels = _labels(ds)
    assert [label for label, *_ in labels] == [label for label, *_ in ref_labels]
    assert max(abs(a[1] - b[1]) + abs(a[2] - b[2]) for a, b in zip(labels, ref_labels, strict=True)) < 1e-4
    print(f"\n[shards] re-run after the job's worker died with {done} images encoded: {rerun}")


def test_shards_on_the_embedded_default(embedded_env, start_worker):
    """SQLite and its broker: the same claims and leases (one worker, which encodes every shard)."""
    owner, ds, _ = make_dataset(30)
    job_id = make_job(owner, ds, **PARAMS)
    worker = start_worker(TAGSIFT_ENCODE_SHARD_IMAGES="8")
    enqueue(TRAIN_TASK, job_id)
    job = wait_status(job_id, FINISHED, timeout=180)
    assert job.status == "succeeded", (job.error_message, worker.log()[-3000:])
    event = _shards_event(job_id)
    assert event["shards"] == 4 and event["images"] == 30 and sum(event["encoded_by"].values()) == 4
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EncodeShard)) == 0
