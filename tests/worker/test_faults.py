"""Fault injection with the real processes: PostgreSQL, Redis, ``tagsift worker`` and ``tagsift serve``.

Nothing here is mocked or eager: workers are separate processes that are SIGKILLed, Redis and PostgreSQL are servers
of the test's own (never the shared ones) that are stopped and started again on the same port, and the API is a
real uvicorn process answering HTTP. Each test prints the figures it measured (``pytest -s``) for
docs/reliability.md. Run: ``.venv/bin/pytest tests/worker/test_faults.py -s``.
"""

from __future__ import annotations

import time
import uuid
from typing import NamedTuple

import httpx
import pytest
import redis
import torch
from sqlalchemy import create_engine, select

from app.db import session_scope
from app.models import Item, Owner
from app.queue import TRAIN_TASK, enqueue
from app.services.api_keys import create_api_key
from tests.services import free_port
from tests.worker.conftest import (
    SLOW_IMAGE_CLIP,
    SLOW_TEXT_CLIP,
    events,
    get_job,
    make_dataset,
    make_job,
    model_count,
    tiny_backbone,
    wait_for,
    wait_status,
)
from worker.leases import DatabaseUnavailable, retry_db

pytestmark = pytest.mark.integration

FINISHED = ("succeeded", "failed", "cancelled")

#: Each test worker uses one torch thread: two of them on a 2-core machine do not fight over the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# --- helpers ----------------------------------------------------------------------------------------------------------


def _items(dataset_id: str) -> list[Item]:
    with session_scope() as session:
        return list(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)))


def _epochs(job_id: str) -> list[int]:
    return [e.data["epoch"] for e in events(job_id, "epoch")]


def _api_key(owner_id: str) -> str:
    with session_scope() as session:
        return create_api_key(session=session, owner_name=session.get(Owner, owner_id).name)


def _client(base_url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _runner_pid(job_id: str) -> int:
    return int(get_job(job_id).lease_owner.split(":")[1])


class Answer(NamedTuple):
    label: str  # "GET /jobs/{id}"
    status: int
    body: dict
    seconds: float
    content_type: str
    retry_after: str | None


class Probe:
    """Sends requests during an outage and keeps every answer."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.answers: list[Answer] = []

    def call(self, method: str, path: str, label: str | None = None, **kw) -> httpx.Response:
        """``label`` (default: the path) groups the answers, e.g. "GET /jobs/{id}"."""
        t0 = time.monotonic()
        r = self.client.request(method, path, **kw)
        ctype = r.headers.get("content-type", "").split(";")[0]
        body = r.json() if ctype.endswith("json") else {"raw": r.text}
        self.answers.append(
            Answer(
                f"{method} {label or path}",
                r.status_code,
                body,
                time.monotonic() - t0,
                ctype,
                r.headers.get("retry-after"),
            )
        )
        return r

    def of(self, label: str) -> list[Answer]:
        return [a for a in self.answers if a.label == label]

    def statuses(self, label: str) -> set[int]:
        return {a.status for a in self.of(label)}

    def never_500(self) -> None:
        bad = [a for a in self.answers if a.status >= 500 and a.status != 503]
        assert not bad, f"5xx other than 503 during the outage: {bad[:3]}"

    def summary(self) -> str:
        counts: dict[str, dict[int, int]] = {}
        for a in self.answers:
            counts.setdefault(a.label, {}).setdefault(a.status, 0)
            counts[a.label][a.status] += 1
        slowest = max((a.seconds for a in self.answers), default=0.0)
        shown = ", ".join(f"{label} {dict(sorted(c.items()))}" for label, c in counts.items())
        return f"{len(self.answers)} requests ({shown}), slowest {slowest:.2f}s"


def _wait_ready(client: httpx.Client, timeout: float) -> float:
    """Seconds until /readyz answers 200 (bounded)."""
    t0 = time.monotonic()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout, "/readyz to answer 200 again", 0.2)
    return time.monotonic() - t0


# --- 1. SIGKILL inside an epoch ---------------------------------------------------------------------------------------

#: 24 items in batches of 2 with the slow text tower: each epoch is 12 SGD steps, a few hundred ms on CPU.
RESUME_PARAMS = {
    "method": "coop",
    "loss": "rc",
    "epochs": 6,
    "batch_size": 2,
    "lr": 0.01,
    "n_ctx": 4,
    "seed": 7,
    "views": 2,
}


def test_sigkill_inside_an_epoch_resumes_to_the_labels_of_an_uninterrupted_run(prod_env, start_worker):
    """Extends the SIGKILL resume test of test_worker_process.py: the kill lands inside an epoch, and the resumed
    job's labels (per item, confidence, margin) and per-epoch losses equal those of an uninterrupted run."""
    n, epochs = 24, RESUME_PARAMS["epochs"]
    owner, ref_ds, _ = make_dataset(n)
    _, victim_ds, _ = make_dataset(n, owner_id=owner)  # the same images and candidate sets
    reference = make_job(owner, ref_ds, **RESUME_PARAMS)
    victim = make_job(owner, victim_ds, **RESUME_PARAMS)
    slow = tiny_backbone(prod_env.data_dir, SLOW_TEXT_CLIP, "slow-text")
    workers = [start_worker(TAGSIFT_BACKBONE=slow, **ONE_THREAD), start_worker(TAGSIFT_BACKBONE=slow, **ONE_THREAD)]
    enqueue(TRAIN_TASK, reference)
    # the victim starts once the reference has encoded the images: it reads the very features the reference
    # trains on from the feature cache
    wait_for(lambda: "training" in [e.data["stage"] for e in events(reference, "stage")], 120, "reference training")
    enqueue(TRAIN_TASK, victim)

    # Kill inside an epoch: see epoch k >= 2 finish (checkpoint written, event recorded), then wait part of an epoch.
    ckpt = prod_env.data_dir / "jobs" / victim / "ckpt.pt"
    seen = {"last": 0}

    def fresh_epoch():
        evs = events(victim, "epoch")
        last = evs[-1] if evs else None
        fresh = last is not None and last.data["epoch"] > seen["last"] and last.data["epoch"] >= 2
        seen["last"] = last.data["epoch"] if last else 0
        return last if fresh else None

    ev = wait_for(fresh_epoch, 120, "the victim's epoch 2 to finish", interval=0.02)
    seen_at = time.monotonic()
    epoch_seconds = ev.data["seconds"]
    assert ev.data["epoch"] < epochs - 1, f"training ran ahead (epoch {ev.data['epoch']} of {epochs} already)"
    first = next(w for w in workers if w.proc.pid == _runner_pid(victim))
    time.sleep(max(0.0, 0.4 * epoch_seconds - (time.monotonic() - seen_at)))
    first.kill()  # SIGKILL main process and child: nothing acks, nothing cleans up
    into_epoch = time.monotonic() - seen_at
    ckpt_epoch = int(torch.load(ckpt, weights_only=False)["epoch"])
    killed_epochs = _epochs(victim)
    assert get_job(victim).status == "running"
    # the last checkpoint and the last epoch event agree, and training was not over: the kill fell inside the
    # next epoch (fit goes straight from one epoch's event to the next epoch's first step)
    assert ckpt_epoch == killed_epochs[-1] < epochs, (
        f"not killed inside an epoch: checkpoint at epoch {ckpt_epoch}, events {killed_epochs}"
    )

    second = next(w for w in workers if w is not first)  # it resumes the job once the lease has expired
    ref_job = wait_status(reference, FINISHED, timeout=180)
    assert ref_job.status == "succeeded" and ref_job.attempt == 1, (ref_job.error_message, second.log()[-3000:])
    job = wait_status(victim, FINISHED, timeout=180)
    assert job.status == "succeeded", (job.error_message, second.log()[-3000:])
    assert job.attempt == 2 and model_count(victim) == 1 and job.metrics["attempt"] == 2
    assert [e.data["attempt"] for e in events(victim, "attempt")] == [1, 2]
    runners = [e.data["runner"] for e in events(victim, "attempt")]
    assert int(runners[1].split(":")[1]) == second.proc.pid != first.proc.pid, runners
    training = [e.data for e in events(victim, "stage") if e.data["stage"] == "training"]
    assert [t["resumed"] for t in training] == [False, True]
    all_epochs = _epochs(victim)
    assert all_epochs == [*range(1, ckpt_epoch + 1), *range(ckpt_epoch + 1, epochs + 1)], (
        f"the re-run must resume after checkpoint epoch {ckpt_epoch}: {all_epochs}"
    )
    assert not ckpt.parent.exists()

    # The labels equal those of the uninterrupted run of the same data with the same seed.
    ref_items, victim_items = _items(ref_ds), _items(victim_ds)
    assert [i.sha256 for i in ref_items] == [i.sha256 for i in victim_items]
    same = sum(a.label == b.label for a, b in zip(ref_items, victim_items, strict=True))
    conf_diff = max(abs(a.confidence - b.confidence) for a, b in zip(ref_items, victim_items, strict=True))
    margin_diff = max(abs(a.margin - b.margin) for a, b in zip(ref_items, victim_items, strict=True))
    figures = (
        f"SIGKILL {into_epoch:.2f}s into epoch {ckpt_epoch + 1} of {epochs} (epochs take ~{epoch_seconds:.2f}s), "
        f"resumed from checkpoint epoch {ckpt_epoch} as attempt {job.attempt}; labels equal on {same}/{n} items, "
        f"max confidence diff {conf_diff:.1e}, max margin diff {margin_diff:.1e}"
    )
    print(f"\n[faults] sigkill: {figures}")
    assert same == n, figures
    # float32 on CPU: the same computation in another process may differ in the last bits (seen once: 8e-7)
    assert conf_diff < 1e-5 and margin_diff < 1e-5, figures
    ref_loss = [e.data["loss"] for e in events(reference, "epoch")]
    victim_loss = [e.data["loss"] for e in events(victim, "epoch")]
    assert victim_loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-7), (ref_loss, victim_loss)


# --- 2. a job that outlives the broker's visibility timeout -----------------------------------------------------


def test_job_outliving_the_visibility_timeout_runs_once(tagsift_env, postgres_url, own_redis, start_worker):
    """Redis hands an unacked message to another consumer once it is older than the visibility timeout; the second
    delivery finds the job leased by a live runner and returns ("busy"), so the job runs once."""
    visibility = 2
    tagsift_env(database_url=postgres_url, broker_url=own_redis.url, queue=f"test-{uuid.uuid4().hex[:8]}")
    owner, ds, _ = make_dataset(24)
    epochs = 24  # long enough that worker 2 starts while the job trains (it redelivered at ~epoch 9 of 16 here)
    job_id = make_job(owner, ds, epochs=epochs, batch_size=2, lr=0.01, n_ctx=4)
    slow = tiny_backbone(tagsift_env().data_dir, SLOW_TEXT_CLIP, "slow-text")
    env = {"TAGSIFT_BACKBONE": slow, "TAGSIFT_BROKER_VISIBILITY_TIMEOUT": str(visibility), **ONE_THREAD}
    runner = start_worker(**env)
    enqueue(TRAIN_TASK, job_id)
    wait_for(lambda: events(job_id, "attempt"), 60, "the first run to claim the job")
    claimed = time.monotonic()
    other = start_worker(**env)  # at start it restores unacked messages older than the visibility timeout
    wait_for(lambda: "not run (busy)" in other.log(), 90, "the redelivered message to reach worker 2")
    redelivered_after = time.monotonic() - claimed
    running_epoch = get_job(job_id).progress.get("epoch")
    assert get_job(job_id).status == "running", "the redelivery must arrive while the job runs (raise epochs)"

    job = wait_status(job_id, FINISHED, timeout=180)
    assert job.status == "succeeded", (job.error_message, runner.log()[-3000:])
    assert job.attempt == 1 and model_count(job_id) == 1
    assert [e.data["attempt"] for e in events(job_id, "attempt")] == [1]
    assert _epochs(job_id) == list(range(1, epochs + 1)), "each epoch ran exactly once"
    assert f"job {job_id}: succeeded" not in other.log() and f"job {job_id}: training" not in other.log()
    assert runner.log().count(f"job {job_id}: succeeded") == 1
    r = redis.Redis.from_url(own_redis.url)
    wait_for(lambda: r.hlen("unacked") == 0, 30, "both deliveries to be acked")
    print(
        f"\n[faults] visibility timeout {visibility}s: job ran {job.metrics['train_seconds']:.1f}s of training; "
        f"message redelivered to worker 2 after {redelivered_after:.1f}s (job at epoch {running_epoch} of "
        f"{epochs}), which returned 'busy'; attempts {job.attempt}, models {model_count(job_id)}, "
        f"epoch events {len(_epochs(job_id))}"
    )


# --- 3. Redis restarted while a job runs and requests arrive --------------------------------------------------------


def test_redis_restart_loses_no_job_and_readyz_answers_503(
    tagsift_env, postgres_url, own_redis, start_worker, start_api
):
    """Redis (no persistence) is stopped while one job trains and another waits in the queue, then started again
    empty. During the outage /readyz answers 503 (broker down), reads keep working, and a job created meanwhile is
    committed and answered 202 (its message is re-sent by the reaper). Every job finishes; none runs twice."""
    tagsift_env(database_url=postgres_url, broker_url=own_redis.url, queue=f"test-{uuid.uuid4().hex[:8]}")
    owner, ds, _ = make_dataset(24)
    client = _client("", _api_key(owner))
    slow = tiny_backbone(tagsift_env().data_dir, SLOW_TEXT_CLIP, "slow-text")
    worker = start_worker(TAGSIFT_BACKBONE=slow, **ONE_THREAD)
    api = start_api()
    client.base_url = api.base_url
    assert client.get("/readyz").status_code == 200
    body = {"method": "coop", "loss": "rc", "batch_size": 2, "lr": 0.01, "n_ctx": 4}
    epochs = 20
    running = client.post(f"/datasets/{ds}/jobs", json={**body, "epochs": epochs}).json()["id"]
    waiting = client.post(f"/datasets/{ds}/jobs", json={**body, "epochs": 2}).json()["id"]
    wait_for(lambda: len(_epochs(running)) >= 1, 120, "the first job to train")

    probe = Probe(client)
    own_redis.stop()
    down_at = time.monotonic()
    created = probe.call("POST", f"/datasets/{ds}/jobs", "/datasets/{id}/jobs", json={**body, "epochs": 2})
    assert created.status_code == 202, created.text
    during = created.json()["id"]
    assert created.json()["status"] == "queued"
    while time.monotonic() - down_at < 4:
        probe.call("GET", "/readyz")
        probe.call("GET", f"/jobs/{running}", "/jobs/{id}")
        probe.call("GET", "/healthz")
        time.sleep(0.2)
    epoch_during_outage = get_job(running).progress.get("epoch")
    assert get_job(running).status == "running", "the job must still run when Redis comes back (raise epochs)"
    own_redis.start()
    outage = time.monotonic() - down_at
    recovered = _wait_ready(client, 30)

    probe.never_500()
    readyz = probe.of("GET /readyz")
    assert readyz and probe.statuses("GET /readyz") == {503}, readyz[:3]
    assert all(a.body["checks"] == {"database": True, "broker": False} for a in readyz), readyz[:3]
    assert probe.statuses("GET /jobs/{id}") == {200} and probe.statuses("GET /healthz") == {200}
    assert any(e.data.get("code") == "broker_unavailable" for e in events(during, "error"))

    results = {}
    for job_id in (running, waiting, during):
        job = wait_status(job_id, FINISHED, timeout=180)
        assert job.status == "succeeded", (job_id, job.error_message, worker.log()[-3000:])
        assert job.attempt == 1 and model_count(job_id) == 1, job_id
        results[job_id] = job
    assert worker.proc.poll() is None, "the worker must survive the broker outage"
    assert _epochs(running) == list(range(1, epochs + 1))
    requeued = {j: len(events(j, "requeue")) for j in (waiting, during)}
    print(
        f"\n[faults] redis restart: outage {outage:.1f}s while job 1 trained (epoch {epoch_during_outage} of "
        f"{epochs}) and job 2 waited in the queue; {probe.summary()}; job created during the outage answered "
        f"202 (queued, broker_unavailable event); /readyz 200 again {recovered:.1f}s after the restart; 3/3 jobs "
        f"succeeded (attempt 1 each, one model each; reaper re-sends: {list(requeued.values())})"
    )


# --- 4. PostgreSQL restarted while the API serves and a job runs ----------------------------------------------------


def test_postgres_restart_answers_503_then_recovers_and_the_job_finishes(
    tagsift_env, own_postgres, redis_url, start_worker, start_api
):
    """Two outages of the job's database (``pg_ctl stop -m fast``, then ``-m immediate``: a crash) while a job
    trains: the API answers 503 problem+json (never 500), /readyz 503; after each restart everything answers again,
    the worker process is still there and the job rides the outages out and succeeds. The worker uses the prefork
    pool, as in production (the run is in its child process)."""
    tagsift_env(database_url=own_postgres.url, broker_url=redis_url, queue=f"test-{uuid.uuid4().hex[:8]}")
    owner, ds, _ = make_dataset(24)
    client = _client("", _api_key(owner))
    slow = tiny_backbone(tagsift_env().data_dir, SLOW_TEXT_CLIP, "slow-text")
    # the lease outlives the outages (as the 120 s default does in production)
    worker = start_worker("prefork", TAGSIFT_BACKBONE=slow, TAGSIFT_JOB_LEASE_SECONDS="30", **ONE_THREAD)
    api = start_api()
    client.base_url = api.base_url
    assert client.get("/readyz").status_code == 200
    body = {"method": "coop", "loss": "rc", "batch_size": 2, "lr": 0.01, "n_ctx": 4}
    epochs = 16
    job_id = client.post(f"/datasets/{ds}/jobs", json={**body, "epochs": epochs}).json()["id"]

    probe = Probe(client)
    outages = []
    for mode, after_epoch in (("fast", 1), ("immediate", 4)):
        wait_for(lambda n=after_epoch: len(_epochs(job_id)) >= n, 120, f"the job to reach epoch {after_epoch}")
        assert get_job(job_id).status == "running", f"the job finished before outage -m {mode} (raise epochs)"
        own_postgres.stop(mode)
        down_at = time.monotonic()
        while time.monotonic() - down_at < 3:
            probe.call("GET", f"/jobs/{job_id}", "/jobs/{id}")
            probe.call("GET", f"/jobs/{job_id}/events", "/jobs/{id}/events")
            probe.call("GET", "/datasets")
            probe.call("GET", "/readyz")
            probe.call("POST", f"/datasets/{ds}/jobs", "/datasets/{id}/jobs", json={**body, "epochs": 2})
            probe.call("GET", "/healthz")
            time.sleep(0.2)
        own_postgres.start()
        outage = time.monotonic() - down_at
        recovered = _wait_ready(client, 30)
        outages.append(f"-m {mode}: {outage:.1f}s, /readyz 200 {recovered:.1f}s after the restart")
        assert client.get(f"/jobs/{job_id}").status_code == 200

    probe.never_500()
    for label in ("GET /jobs/{id}", "GET /jobs/{id}/events", "GET /datasets", "POST /datasets/{id}/jobs"):
        answers = probe.of(label)
        assert answers and probe.statuses(label) == {503}, answers[:3]
        assert all(a.content_type == "application/problem+json" and a.retry_after for a in answers), answers[:3]
        assert all(a.body["code"] == "database_unavailable" and a.body["status"] == 503 for a in answers), answers[:3]
    readyz = probe.of("GET /readyz")
    assert readyz and probe.statuses("GET /readyz") == {503}
    assert all(a.body["checks"] == {"database": False, "broker": True} for a in readyz), readyz[:3]
    assert probe.statuses("GET /healthz") == {200}

    job = wait_status(job_id, FINISHED, timeout=180)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert job.attempt == 1 and model_count(job_id) == 1
    assert sorted(set(_epochs(job_id))) == list(range(1, epochs + 1))
    assert worker.proc.poll() is None, "the worker must survive the database outage"
    after = client.post(f"/datasets/{ds}/jobs", json={**body, "epochs": 2})
    assert after.status_code == 202, after.text
    assert wait_status(after.json()["id"], FINISHED, timeout=120).status == "succeeded"
    print(
        f"\n[faults] postgres restart: {'; '.join(outages)}; {probe.summary()}; the job rode both outages out "
        f"(attempt {job.attempt}, {epochs}/{epochs} epochs, one model) and a job created after recovery succeeded"
    )


def test_postgres_outage_longer_than_the_lease_resumes_the_job_from_its_checkpoint(
    tagsift_env, own_postgres, redis_url, start_worker
):
    """An outage (``pg_ctl stop -m immediate``) longer than the job's lease: the run stops waiting once its lease
    is over and writes nothing; when the database is back the reaper re-runs the job, which resumes from its last
    checkpoint and succeeds (the same path as a lost worker). The worker process stays up throughout."""
    tagsift_env(database_url=own_postgres.url, broker_url=redis_url, queue=f"test-{uuid.uuid4().hex[:8]}")
    owner, ds, _ = make_dataset(24)
    slow = tiny_backbone(tagsift_env().data_dir, SLOW_TEXT_CLIP, "slow-text")
    lease = 3
    worker = start_worker(TAGSIFT_BACKBONE=slow, TAGSIFT_JOB_LEASE_SECONDS=str(lease), **ONE_THREAD)
    epochs = 10
    job_id = make_job(owner, ds, epochs=epochs, batch_size=2, lr=0.01, n_ctx=4)
    enqueue(TRAIN_TASK, job_id)
    wait_for(lambda: len(_epochs(job_id)) >= 2, 120, "the job to reach epoch 2")
    own_postgres.stop("immediate")
    down_at = time.monotonic()
    wait_for(lambda: "db_unavailable" in worker.log(), 30, "the run to give up waiting for the database")
    gave_up_after = time.monotonic() - down_at
    time.sleep(max(1.0, lease + 1.0 - gave_up_after))  # the outage outlasts the lease
    own_postgres.start()
    outage = time.monotonic() - down_at

    job = wait_status(job_id, FINISHED, timeout=120)
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert outage > lease and job.attempt == 2 and model_count(job_id) == 1
    training = [e.data for e in events(job_id, "stage") if e.data["stage"] == "training"]
    assert [t["resumed"] for t in training] == [False, True]
    second_run = events(job_id, "attempt")[1].id
    first = [e.data["epoch"] for e in events(job_id, "epoch") if e.id < second_run]
    resumed = [e.data["epoch"] for e in events(job_id, "epoch") if e.id > second_run]
    # run 1's epochs, then run 2's from the checkpoint on; the one epoch event whose write was abandoned when the
    # run gave up may be missing (its checkpoint was saved before the event)
    assert first == list(range(1, len(first) + 1)) and resumed == list(range(resumed[0], epochs + 1)), (first, resumed)
    assert 1 < resumed[0] <= len(first) + 2, (first, resumed)
    missing = sorted(set(range(1, epochs + 1)) - set(first) - set(resumed))
    assert events(job_id, "error") == [] and worker.proc.poll() is None
    print(
        f"\n[faults] postgres outage longer than the lease ({lease}s): outage {outage:.1f}s (-m immediate); the run "
        f"gave up after {gave_up_after:.1f}s without writing; the reaper re-ran the job as attempt 2, which resumed "
        f"at epoch {resumed[0]} from its checkpoint and succeeded (one model, no error event; epoch events missing: "
        f"{missing or 'none'})"
    )


def test_retry_db_waits_for_a_refused_database_then_gives_up():
    """The building block of the above: real refused connections are retried until the patience runs out; a
    statement error is not retried."""
    engine = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none", connect_args={"connect_timeout": 2}
    )
    tries = []

    def refused() -> None:
        tries.append(time.monotonic())
        with engine.connect():
            pass

    with pytest.raises(DatabaseUnavailable, match=r"probe: the database was unreachable for 1s \(\d+ tries\)"):
        retry_db(refused, what="probe", patience=1.0, first_delay=0.1)
    assert len(tries) >= 3 and 0.5 < tries[-1] - tries[0] <= 1.5
    engine.dispose()
    calls = []

    def bad_statement() -> None:
        calls.append(1)
        raise ValueError("not a database outage")

    with pytest.raises(ValueError):
        retry_db(bad_statement, what="probe", patience=5.0)
    assert calls == [1]


# --- 5. cancel while queued, while encoding images, while training --------------------------------------------------


def test_cancel_while_queued_encoding_and_training_then_the_worker_serves_the_next_job(
    prod_env, start_worker, start_api
):
    """Cancels through the API (``POST /jobs/{id}/cancel``): a queued job is cancelled at once and its message,
    consumed later, runs nothing; a job cancelled while encoding stops between encoding batches (not every image
    was encoded, no training); a job cancelled while training stops within a step. None leaves a model, and the same
    worker process then runs the next job to success."""
    owner, small, _ = make_dataset(6)
    n_big = 256
    _, big, _ = make_dataset(n_big, owner_id=owner)
    client = _client("", _api_key(owner))
    api = start_api()
    client.base_url = api.base_url
    body = {"method": "coop", "loss": "rc", "batch_size": 8, "lr": 0.01, "n_ctx": 4, "views": 1}

    def create(ds: str, epochs: int) -> str:
        r = client.post(f"/datasets/{ds}/jobs", json={**body, "epochs": epochs})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def cancel(job_id: str) -> dict:
        r = client.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 202, r.text
        return r.json()

    figures = []
    # queued: no worker yet; the cancel is immediate and the message, when consumed, runs nothing
    queued = create(small, 2)
    assert cancel(queued)["status"] == "cancelled"

    # encoding: 256 images through a 224 px image tower, cancelled once the encoding stage has begun
    encoding = create(big, 2)
    slow_image = tiny_backbone(prod_env.data_dir, SLOW_IMAGE_CLIP, "slow-image")
    worker = start_worker(TAGSIFT_BACKBONE=slow_image, **ONE_THREAD)
    wait_for(lambda: client.get(f"/jobs/{encoding}").json()["progress"]["stage"] == "encoding", 120, "encoding")
    t0 = time.monotonic()
    answer = cancel(encoding)
    assert answer["status"] == "running" and answer["cancel_requested"] is True
    job = wait_status(encoding, FINISHED, timeout=60)
    latency = time.monotonic() - t0
    stages = [e.data["stage"] for e in events(encoding, "stage")]
    cached = len(list((prod_env.data_dir / "features").rglob("*.npy")))
    assert job.status == "cancelled" and "training" not in stages, stages
    assert cached < n_big, f"all {n_big} images were encoded: the cancel did not land inside encoding"
    figures.append(f"encoding: cancelled {latency:.2f}s after the request, {cached}/{n_big} images encoded")

    # training
    training = create(small, 1000)
    wait_for(lambda: len(_epochs(training)) >= 2, 90, "training to start")
    t0 = time.monotonic()
    cancel(training)
    job = wait_status(training, FINISHED, timeout=60)
    latency = time.monotonic() - t0
    assert job.status == "cancelled" and len(_epochs(training)) < 1000
    assert not (prod_env.data_dir / "jobs" / training).exists()
    figures.append(f"training: cancelled {latency:.2f}s after the request, at epoch {len(_epochs(training))}/1000")

    # the same worker process serves the next job
    following = create(small, 2)
    job = wait_status(following, FINISHED, timeout=120)
    assert job.status == "succeeded" and model_count(following) == 1, (job.error_message, worker.log()[-3000:])
    assert _runner_pid(following) == worker.proc.pid and worker.proc.poll() is None

    for job_id in (queued, encoding, training):
        job = get_job(job_id)
        assert (job.status, job.model_id, model_count(job_id)) == ("cancelled", None, 0), job_id
    assert get_job(queued).attempt == 0 and events(queued, "attempt") == []
    assert f"job {queued}: not run (finished)" in worker.log()
    assert stages[-1] == "cancelled"
    print(f"\n[faults] cancel: queued: cancelled at once, never ran; {'; '.join(figures)}; next job succeeded")


# --- 6. a job whose workers keep dying ------------------------------------------------------------------------------


def test_attempts_exhausted_after_real_worker_deaths(prod_env, start_worker):
    """Both runs of a job (max_attempts 2) lose their worker to SIGKILL; the next claim fails the job with
    ``attempts_exhausted`` and a message that says how many runs were lost and which setting to change."""
    owner, ds, _ = make_dataset(6)
    job_id = make_job(owner, ds, epochs=1000, max_attempts=2)
    workers = [start_worker(**ONE_THREAD), start_worker(**ONE_THREAD)]
    enqueue(TRAIN_TASK, job_id)
    killed = []
    for attempt in (1, 2):

        def training(a: int = attempt) -> bool:
            job = get_job(job_id)
            return job.attempt == a and job.progress.get("stage") == "training" and job.progress.get("epoch", 0) >= 1

        wait_for(training, 90, f"run {attempt} to train")
        pid = _runner_pid(job_id)
        victim = next(w for w in workers if w.proc.pid == pid)
        victim.kill()
        killed.append(pid)
        if attempt == 1:
            workers.append(start_worker(**ONE_THREAD))  # a spare, so that someone is left to reap run 2
    t0 = time.monotonic()
    job = wait_status(job_id, FINISHED, timeout=90)
    assert job.status == "failed" and job.error_code == "attempts_exhausted", (job.status, job.error_message)
    assert "started 2 time(s)" in job.error_message and "max_attempts=2" in job.error_message
    assert str(killed[-1]) in job.error_message  # the last lost runner is named
    assert job.attempt == 2 and model_count(job_id) == 0
    assert [e.data["attempt"] for e in events(job_id, "attempt")] == [1, 2]
    assert [int(e.data["runner"].split(":")[1]) for e in events(job_id, "attempt")] == killed
    assert events(job_id, "error")[-1].data["code"] == "attempts_exhausted"
    print(
        f"\n[faults] attempts exhausted: runs 1 and 2 SIGKILLed (worker pids {killed}), job failed "
        f"{time.monotonic() - t0:.1f}s after the second kill: {job.error_message!r}"
    )
