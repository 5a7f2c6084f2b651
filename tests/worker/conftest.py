"""Worker test helpers: rows made through the ORM, synthetic images in the BlobStore, real worker processes.

Workers are real ``tagsift worker`` processes (``subprocess``), configured through the same ``TAGSIFT_*``
environment the test set up (real PostgreSQL + Redis, or the embedded SQLite + SQLite broker); no eager mode.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Dataset, Item, Job, JobEvent, Model, Owner, new_id
from app.storage import get_storage

ROOT = Path(__file__).resolve().parents[2]
TAGSIFT = ROOT / ".venv" / "bin" / "tagsift"

#: A tiny random-init open_clip model (ModifiedResNet image tower, 1-layer text transformer): fast on CPU.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

#: Fast reliability timings for worker processes under test.
FAST_LEASES = {
    "TAGSIFT_JOB_LEASE_SECONDS": "4",
    "TAGSIFT_JOB_HEARTBEAT_SECONDS": "1",
    "TAGSIFT_JOB_CANCEL_POLL_SECONDS": "0.2",
    "TAGSIFT_JOB_REAP_INTERVAL_SECONDS": "1",
    "TAGSIFT_JOB_REQUEUE_AFTER_SECONDS": "3",
    "TAGSIFT_TRAIN_VIEWS": "1",
    "TAGSIFT_DEVICE": "cpu",
    "TAGSIFT_LOG_LEVEL": "INFO",
}

CLASSES = ["red", "green", "blue"]


def tiny_backbone(data_dir: Path) -> str:
    """Write the tiny config JSON under ``data_dir`` and return the backbone setting that names it."""
    path = data_dir / "tiny-clip.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TINY_CLIP))
    return str(path)


def color_image(index: int, color: str, size: int = 40) -> bytes:
    """A noisy image dominated by ``color`` (distinct bytes per ``index``)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(index)
    base = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}[color]
    arr = np.clip(rng.normal(0, 25, (size, size, 3)) + np.array(base), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_dataset(n: int = 12, *, reviewer_item: bool = False) -> tuple[str, str, list[str]]:
    """An owner and a dataset of ``n`` synthetic images, each with two candidate tags (one true).

    Returns (owner_id, dataset_id, true labels in item order).
    """
    storage = get_storage()
    truths = []
    with session_scope() as session:
        owner = Owner(name=f"owner-{new_id()[:8]}")
        session.add(owner)
        session.flush()
        ds = Dataset(owner_id=owner.id, name="synthetic", classes=list(CLASSES))
        session.add(ds)
        session.flush()
        for i in range(n):
            color = CLASSES[i % 3]
            other = CLASSES[(i + 1 + i // 3 % 2) % 3]
            data = color_image(i, color)
            sha = storage.put(data)
            item = Item(
                dataset_id=ds.id,
                seq=i,
                file=f"img{i}.png",
                sha256=sha,
                width=40,
                height=40,
                candidates=sorted({color, other}),
            )
            if reviewer_item and i == 0:
                item.label, item.label_source = "blue", "reviewer"  # deliberately not its colour
            session.add(item)
            truths.append(color)
        return owner.id, ds.id, truths


def make_job(owner_id: str, dataset_id: str, **params) -> str:
    max_attempts = params.pop("max_attempts", 2)
    defaults = {"method": "coop", "loss": "rc", "epochs": 3, "batch_size": 8, "lr": 0.01, "n_ctx": 4, "seed": 1}
    with session_scope() as session:
        job = Job(owner_id=owner_id, dataset_id=dataset_id, params={**defaults, **params}, max_attempts=max_attempts)
        session.add(job)
        session.flush()
        return job.id


def get_job(job_id: str) -> Job:
    with session_scope() as session:
        return session.get(Job, job_id)


def events(job_id: str, kind: str | None = None) -> list[JobEvent]:
    with session_scope() as session:
        q = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        if kind:
            q = q.where(JobEvent.kind == kind)
        return list(session.scalars(q))


def model_count(job_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Model).where(Model.job_id == job_id))


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_status(job_id: str, statuses: tuple[str, ...], timeout: float = 90) -> Job:
    return wait_for(
        lambda: (j := get_job(job_id)) is not None and j.status in statuses and j,
        timeout,
        f"job {job_id} to reach {statuses} (now {get_job(job_id).status})",
    )


class WorkerProcess:
    """A real ``tagsift worker`` process in its own process group (so a test can SIGKILL all of it)."""

    def __init__(self, log_path: Path, env: dict[str, str], pool: str = "solo") -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        cmd = [str(TAGSIFT) if TAGSIFT.exists() else sys.executable, "worker", "--pool", pool, "--concurrency", "1"]
        if not TAGSIFT.exists():
            cmd[1:1] = ["-m", "worker.cli"]
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): nothing gets to clean up."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes with the test's TAGSIFT_* environment (plus overrides); stopped at the end."""
    started: list[WorkerProcess] = []

    def start(pool: str = "solo", **overrides: str) -> WorkerProcess:
        env = {**os.environ, **FAST_LEASES}
        env["TAGSIFT_BACKBONE"] = tiny_backbone(Path(env["TAGSIFT_DATA_DIR"]))
        env.update({k: str(v) for k, v in overrides.items()})
        worker = WorkerProcess(tmp_path / f"worker-{len(started)}.log", env, pool)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for worker in started:
        if worker.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM, None):
            print(worker.log()[-4000:])
