"""Worker test helpers: rows made through the ORM, synthetic images in the BlobStore, real worker processes.

Workers are real ``tagsift worker`` processes (``subprocess``), configured through the same ``TAGSIFT_*``
environment the test set up (real PostgreSQL + Redis, or the embedded SQLite + SQLite broker); no eager mode.
The fault tests also start a real API (``tagsift serve``) and their own Redis and PostgreSQL servers, which they stop
and start again (never the shared ones other test runs use).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models import Dataset, Item, Job, JobEvent, Model, Owner, new_id
from app.storage import get_storage
from tests import services

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


#: The tiny model with a bigger text tower: one training step takes milliseconds, so an epoch of a few dozen
#: items in batches of 2 lasts a few hundred ms (a SIGKILL can land inside an epoch).
SLOW_TEXT_CLIP = {**TINY_CLIP, "text_cfg": {**TINY_CLIP["text_cfg"], "width": 512, "heads": 4, "layers": 4}}

#: The tiny model with 224 px input and a wider image tower: encoding takes tens of ms per image on one CPU thread
#: (a cancel can land inside the encoding stage, which checks it between batches of 64 images).
SLOW_IMAGE_CLIP = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 224, "width": 16}}


def tiny_backbone(data_dir: Path, config: dict | None = None, name: str = "tiny-clip") -> str:
    """Write a model config JSON (default: the tiny one) under ``data_dir``; return the backbone setting naming it."""
    path = data_dir / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config or TINY_CLIP))
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


def make_dataset(
    n: int = 12, *, reviewer_item: bool = False, owner_id: str | None = None
) -> tuple[str, str, list[str]]:
    """An owner (new, or ``owner_id``) and a dataset of ``n`` synthetic images, each with two candidate tags (one
    true). The same ``n`` gives the same images and candidate sets.

    Returns (owner_id, dataset_id, true labels in item order).
    """
    storage = get_storage()
    truths = []
    with session_scope() as session:
        owner = session.get(Owner, owner_id) if owner_id else Owner(name=f"owner-{new_id()[:8]}")
        session.add(owner)
        session.flush()
        ds = Dataset(owner_id=owner.id, name="synthetic", classes=list(CLASSES), item_count=n)  # as an upload
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


class TagsiftProcess:
    """A real ``tagsift <args>`` process in its own process group (a test can SIGKILL all of it), logged to a file."""

    def __init__(self, log_path: Path, env: dict[str, str], *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        cmd = [str(TAGSIFT)] if TAGSIFT.exists() else [sys.executable, "-m", "worker.cli"]
        self.proc = subprocess.Popen(
            [*cmd, *args], env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and children): nothing gets to clean up."""
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


class WorkerProcess(TagsiftProcess):
    """A real ``tagsift worker`` (one slot of the given pool)."""

    def __init__(self, log_path: Path, env: dict[str, str], pool: str = "solo", args: tuple[str, ...] = ()) -> None:
        super().__init__(log_path, env, "worker", "--pool", pool, "--concurrency", "1", *args)


@pytest.fixture(autouse=True)
def _no_unfinished_jobs_of_earlier_tests(request: pytest.FixtureRequest) -> None:
    """Earlier tests' unfinished jobs in this run's PostgreSQL database are settled (cancelled) before a test that
    uses it: a worker's reaper re-sends every stale job of its database, as it must in a deployment, so a test's
    worker would otherwise spend its time on jobs other tests left queued or running."""
    if "postgres_url" not in request.fixturenames:
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(request.getfixturevalue("postgres_url"))
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'cancelled', cancel_requested = true, lease_owner = NULL,"
                " lease_expires_at = NULL, finished_at = now() WHERE status IN ('queued', 'running')"
            )
        )
    engine.dispose()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes with the test's TAGSIFT_* environment (plus overrides); stopped at the end."""
    started: list[WorkerProcess] = []

    def start(pool: str = "solo", args: tuple[str, ...] = (), **overrides: str) -> WorkerProcess:
        env = {**os.environ, **FAST_LEASES}
        env["TAGSIFT_BACKBONE"] = tiny_backbone(Path(env["TAGSIFT_DATA_DIR"]))
        env.update({k: str(v) for k, v in overrides.items() if v is not None})
        for key in [k for k, v in overrides.items() if v is None]:  # None: unset, so the server default applies
            env.pop(key, None)
        worker = WorkerProcess(tmp_path / f"worker-{len(started)}.log", env, pool, args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for worker in started:
        if worker.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM, None):
            print(worker.log()[-4000:])


# --- servers a fault test may stop and start: its own Redis, its own PostgreSQL cluster, a real API process ----------


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class RestartableRedis:
    """A throwaway ``redis-server`` on a free port of its own (no persistence: a restart loses every message)."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError(services.MISSING_REDIS.format(url="(a throwaway redis-server)"))
        self.folder = Path(tempfile.mkdtemp(prefix="tagsift-fault-redis-"))
        self.port = services.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def answers(self) -> bool:
        return services._redis_answers("127.0.0.1", self.port)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_until(self.answers, 30, f"redis-server on port {self.port}", self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        _wait_until(lambda: not services.tcp_open("127.0.0.1", self.port, 0.2), 10, f"port {self.port} to close")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class RestartablePostgres:
    """A throwaway PostgreSQL cluster (``initdb``) on a free port and data folder of its own, stopped and started
    with ``pg_ctl`` (as the ``postgres`` user when the tests run as root)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise RuntimeError(services.MISSING_POSTGRES.format(url="(a throwaway cluster)"))
        self.folder = Path(tempfile.mkdtemp(prefix="tagsift-fault-pg-"))
        self.data = self.folder / "data"
        self.port = services.free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        cmd, user = services._as_unprivileged(
            [self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        )
        if user:
            import pwd

            pw = pwd.getpwnam(user)
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        self.running = False

    def _ctl(self, *args: str) -> subprocess.CompletedProcess:
        cmd, _ = services._as_unprivileged([self.pg_ctl, "-D", str(self.data), *args])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        res = self._ctl("-l", str(self.folder / "log"), "-w", "-t", "60", "-o", opts, "start")
        if res.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {res.stdout}{res.stderr}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, clean shutdown; ``immediate``: like a crash (recovery at start)."""
        res = self._ctl("-m", mode, "-w", "-t", "60", "stop")
        if res.returncode != 0 and self.running:
            raise RuntimeError(f"pg_ctl stop -m {mode} failed: {res.stdout}{res.stderr}")
        self.running = False

    def close(self) -> None:
        self._ctl("-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def own_redis() -> Iterator[RestartableRedis]:
    """A started Redis of this test's own, which the test may stop and start (port kept)."""
    with services.started(RestartableRedis()) as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[RestartablePostgres]:
    """A started PostgreSQL cluster of this test's own, migrated to head, which the test may stop and start."""
    from app.db import upgrade_database

    with services.started(RestartablePostgres()) as server:
        upgrade_database(server.url)
        yield server


class ApiServer(TagsiftProcess):
    """A real ``tagsift serve`` (uvicorn) process on a free port."""

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.port = services.free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__(log_path, env, "serve", "--port", str(self.port))
        _wait_until(lambda: services.tcp_open("127.0.0.1", self.port, 0.2), 60, "the API to listen", self.proc)


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., ApiServer]]:
    """Start real API processes with the test's TAGSIFT_* environment (plus overrides); stopped at the end."""
    started: list[ApiServer] = []

    def start(**overrides: str) -> ApiServer:
        env = {**os.environ, "TAGSIFT_LOG_LEVEL": "INFO", **{k: str(v) for k, v in overrides.items()}}
        server = ApiServer(tmp_path / f"api-{len(started)}.log", env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
