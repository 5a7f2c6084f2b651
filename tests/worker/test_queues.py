"""Queues by device, with real ``tagsift worker`` processes on the real PostgreSQL + Redis.

A CPU worker consumes TAGSIFT_QUEUE (device 'auto') and TAGSIFT_CPU_QUEUE, never TAGSIFT_GPU_QUEUE: a job asked for
a GPU stays queued, with its message in the GPU queue, even after the CPU worker's reaper has re-sent it and even when
its message is dropped in the wrong queue by hand. A GPU worker (``--device gpu``) takes it.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
import redis

from app.config import get_settings
from app.queue import TRAIN_TASK, enqueue, enqueue_job, job_device
from tests.worker.conftest import events, get_job, make_dataset, make_job, wait_for, wait_status

pytestmark = pytest.mark.integration


def _messages(queue: str) -> list[str]:
    """The job ids named by the messages waiting in ``queue`` (kombu's Redis transport: one list per queue, each
    message JSON with a base64 body of Celery's ``[args, kwargs, embed]``)."""
    raw = redis.Redis.from_url(get_settings().broker_url).lrange(queue, 0, -1)
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in raw]


def test_queue_names_follow_tagsift_queue_and_can_be_set(tagsift_env) -> None:
    settings = tagsift_env(queue="site")
    assert (settings.queue_for("auto"), settings.queue_for("cpu"), settings.queue_for("gpu")) == (
        "site",
        "site.cpu",
        "site.gpu",
    )
    assert settings.worker_queues("cpu") == ["site", "site.cpu"]
    assert settings.worker_queues("gpu") == ["site", "site.gpu"]
    settings = tagsift_env(cpu_queue="cheap", gpu_queue="fast")
    assert settings.worker_queues("cpu") == ["site", "cheap"] and settings.worker_queues("gpu") == ["site", "fast"]
    with pytest.raises(ValueError, match="must be different names"):
        tagsift_env(gpu_queue="site")


def test_a_cpu_worker_never_takes_a_gpu_job(prod_env, start_worker) -> None:
    settings = get_settings()
    owner, ds, _ = make_dataset(6)
    gpu_job = make_job(owner, ds, epochs=1, device="gpu")
    auto_job = make_job(owner, ds, epochs=1)  # no device: a job from before the field, or device "auto"
    cpu_job = make_job(owner, ds, epochs=1, device="cpu")
    for job_id, device in ((gpu_job, "gpu"), (auto_job, "auto"), (cpu_job, "cpu")):
        enqueue_job(job_id, device)
    # a message for the GPU job in the CPU queue by hand (an older tagsift, an operator): never run, sent on
    enqueue(TRAIN_TASK, gpu_job, queue=settings.cpu_queue)

    worker = start_worker()  # TAGSIFT_DEVICE=cpu: a CPU worker
    for job_id in (auto_job, cpu_job):
        job = wait_status(job_id, ("succeeded", "failed"), timeout=120)
        assert job.status == "succeeded", (job.error_message, worker.log()[-3000:])
    wait_for(lambda: "sent on to its queue" in worker.log(), 30, "the misrouted message to be sent on")
    # The reaper of the CPU worker re-sends the stale queued GPU job (TAGSIFT_JOB_REQUEUE_AFTER_SECONDS=3): to its
    # own queue, where this worker never looks.
    wait_for(lambda: len(events(gpu_job, "requeue")) >= 2, 30, "two reaper passes over the queued GPU job")

    job = get_job(gpu_job)
    assert (job.status, job.attempt, job.lease_owner) == ("queued", 0, None)
    assert events(gpu_job, "attempt") == []
    assert "tagsift worker: cpu worker on queues" in worker.log()
    waiting = _messages(settings.gpu_queue)
    assert gpu_job in waiting  # sent on by the guard and re-sent by the reaper, all to the GPU queue
    # the reaper scans the whole database: other tests' stale GPU jobs may be re-sent here too, never any other job
    assert all(job_device(get_job(j).params) == "gpu" for j in set(waiting)), waiting
    # duplicates of the other two (re-sent by the reaper while the worker started) are consumed; nothing else is left
    wait_for(lambda: not _messages(settings.cpu_queue) and not _messages(settings.queue), 30, "the CPU queues to drain")
    assert get_job(gpu_job).status == "queued"
    # only the hand-placed message needed sending on: the reaper's re-sends went to the GPU queue themselves
    assert worker.log().count("sent on to its queue") == 1

    # A GPU worker takes it. This host has no CUDA: the run fails saying so, after the GPU worker claimed it.
    gpu_worker = start_worker(args=("--device", "gpu"))
    job = wait_status(gpu_job, ("succeeded", "failed"), timeout=120)
    assert "tagsift worker: gpu worker on queues" in gpu_worker.log()
    assert (job.status, job.attempt) == ("failed", 1) and "no CUDA device" in job.error_message
    assert str(gpu_worker.proc.pid) in events(gpu_job, "attempt")[0].data["runner"]


def test_the_worker_kind_comes_from_the_option_or_tagsift_device() -> None:
    from worker.runtime import NVIDIA_DEVICE_FILES, resolve_worker_kind, takes

    assert resolve_worker_kind("gpu", "cpu") == "gpu" and resolve_worker_kind("cpu", "cuda:1") == "cpu"
    assert resolve_worker_kind(None, "cpu") == "cpu"
    assert resolve_worker_kind(None, "cuda") == "gpu" and resolve_worker_kind(None, "cuda:1") == "gpu"
    # auto on a host without the NVIDIA driver's device files (this one): a CPU worker, without importing torch
    assert not any(os.path.exists(p) for p in NVIDIA_DEVICE_FILES)
    assert resolve_worker_kind(None, "auto") == "cpu" and resolve_worker_kind("auto", "cuda") == "cpu"
    with pytest.raises(ValueError, match="expected 'auto', 'cpu' or 'gpu'"):
        resolve_worker_kind("tpu", "auto")
    assert takes("cpu", "auto") and takes("cpu", "cpu") and not takes("cpu", "gpu")
    assert takes("gpu", "auto") and takes("gpu", "gpu") and not takes("gpu", "cpu")
