"""``tagsift bench service``: the running service against the libraries it wraps, in one run on one machine.

It starts a real service of its own (a temp data dir; the embedded SQLite + SQLite broker, or the given PostgreSQL
and Redis; a ``tagsift serve`` process on a free loopback port and a ``tagsift worker`` process) and measures:

1. **upload**: CIFAR-10 photos with candidate sets (the q protocol of ``bench.data.partialize``) posted in batches to
   ``POST /datasets/{id}/items`` -> images/s.
2. **training overhead**: one job through the API and the worker (POST -> succeeded, and the job's own
   started_at -> finished_at, i.e. without the queue wait) against the same work done by calling ``ml/`` in this
   process: load the backbone, encode with a fresh ``FeatureCache`` (both cold), ``fit`` with the job's exact
   ``TrainConfig``, ``disambiguate``, ``export_classifier``. Same device, default torch threads in both processes.
   Direct runs and jobs alternate (``train_rounds`` of each, both cold on features) and the fastest of each side
   are compared.
3. **predict**: ``POST /predict`` with one image per request from N concurrent clients (one thread and one
   keep-alive ``http.client`` connection each, bodies encoded in advance) against ONNX Runtime called directly on
   the job's model exported as one ``model.onnx`` (``?merged=true``: tower and head; same ``app.imaging`` decode
   and preprocessing, same images, batch size 1, same number of threads, same session options), in alternating
   rounds -> requests/s (median of the rounds), ratio, p50/p99 latency, CPU ms per request.

Everything is loopback only; every loop is bounded; the processes it started are stopped at the end (their process
groups), and the temp data dir removed. Printed last: one ``upload_images_per_s=... train_overhead=...%`` line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent


@dataclass(kw_only=True)
class ServiceOptions:
    """How a bench starts its own service (`tagsift serve` + one worker): shared by the service and load benches."""

    api_workers: int = 1  # `tagsift serve --workers`
    database_url: str = ""  # empty: SQLite
    broker_url: str = ""  # empty: the SQLite broker
    keep: bool = False  # keep the temp data dir and logs


@dataclass
class ServiceBenchConfig(ServiceOptions):
    cifar10_path: Path
    cache_dir: Path
    backbone: str = "reference"
    images: int = 1000
    upload_batch: int = 100
    q: float = 0.3
    seed: int = 1
    epochs: int = 3
    views: int = 1
    clients: int = 4
    requests: int = 50
    rounds: int = 3  # alternating API / raw predict rounds; medians compared
    train_rounds: int = 3  # alternating direct ml/ runs and jobs; the fastest of each compared
    device: str = "cpu"
    job_timeout: float = 1800.0


@dataclass
class ServiceBenchResult:
    upload_images_per_s: float
    predict_api_rps: float
    predict_raw_rps: float
    p50_ms: float
    p99_ms: float
    raw_p50_ms: float
    raw_p99_ms: float
    train_e2e_s: float
    train_run_s: float
    train_queue_s: float
    train_direct_s: float
    extra: dict = field(default_factory=dict)

    @property
    def predict_ratio(self) -> float:
        return 100.0 * self.predict_api_rps / self.predict_raw_rps

    @property
    def train_overhead(self) -> float:
        return 100.0 * (self.train_e2e_s - self.train_direct_s) / self.train_direct_s

    @property
    def train_overhead_run(self) -> float:
        return 100.0 * (self.train_run_s - self.train_direct_s) / self.train_direct_s

    def summary(self) -> str:
        return (
            f"upload_images_per_s={self.upload_images_per_s:.1f} predict_api_rps={self.predict_api_rps:.1f}"
            f" predict_raw_rps={self.predict_raw_rps:.1f} predict_ratio={self.predict_ratio:.1f}%"
            f" p50_ms={self.p50_ms:.1f} p99_ms={self.p99_ms:.1f} train_overhead={self.train_overhead:.1f}%"
        )


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))  # ceil(pct/100 * n)
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tagsift_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("tagsift")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "worker.cli"]


class _Service:
    """The ``tagsift serve`` and ``tagsift worker`` processes of one run, each in its own process group."""

    def __init__(self, env: dict[str, str], work: Path, port: int) -> None:
        self.env, self.work, self.port = env, work, port
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.base_url = f"http://127.0.0.1:{port}"

    def run(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            [*_tagsift_cmd(), *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tagsift {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout

    def start(self, name: str, *args: str) -> None:
        log_path = self.work / f"{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [*_tagsift_cmd(), *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc, log_path))

    def up(self, *, owner: str, api_workers: int) -> str:
        """Migrate, create an API key (returned), start ``tagsift serve`` and one ``tagsift worker``, wait for both."""
        self.run("migrate")
        key = self.run("create-api-key", "--owner", f"{owner}-{uuid.uuid4().hex[:8]}").strip().splitlines()[-1]
        self.start("api", "serve", "--port", str(self.port), "--workers", str(api_workers))
        self.start("worker", "worker", "--concurrency", "1")
        self.wait_until(lambda: _http_ok(f"{self.base_url}/healthz"), 90, "the API")
        self.wait_until(lambda: _worker_ready(self), 120, "the worker")
        return key

    def pid(self, name: str) -> int:
        return next(proc.pid for n, proc, _ in self.procs if n == name)

    def log_tail(self, name: str, chars: int = 3000) -> str:
        for n, _, path in self.procs:
            if n == name:
                return path.read_text(errors="replace")[-chars:]
        return ""

    def check_alive(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"the {name} process exited ({proc.returncode}):\n{self.log_tail(name)}")

    def wait_until(self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if predicate():
                return
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def stop(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def service_env(
    data_dir: Path,
    *,
    backbone: str,
    cache_dir: Path,
    device: str,
    views: int,
    queue_prefix: str,
    database_url: str,
    broker_url: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of a bench's own service: this process's, minus its TAGSIFT_* variables, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSIFT_")}
    env.update(
        {
            "TAGSIFT_DATA_DIR": str(data_dir),
            "TAGSIFT_BACKBONE": backbone,
            "TAGSIFT_MODEL_CACHE_DIR": str(Path(cache_dir).resolve()),
            "TAGSIFT_DEVICE": device,
            "TAGSIFT_TRAIN_VIEWS": str(views),
            "TAGSIFT_QUEUE": f"{queue_prefix}-{uuid.uuid4().hex[:8]}",
            "TAGSIFT_HOST": "127.0.0.1",
            "TAGSIFT_LOG_LEVEL": "INFO",  # the default (the worker's "ready." line is logged at INFO)
            **extra,
        }
    )
    if database_url:
        env["TAGSIFT_DATABASE_URL"] = database_url
    if broker_url:
        env["TAGSIFT_BROKER_URL"] = broker_url
    return env


def _http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _worker_ready(service: _Service) -> bool:
    """The worker logged ``ready.`` and its (one) prefork child finished importing torch/open_clip/ml: a job sent
    earlier would wait for those imports, a start-up cost rather than a job's."""
    from worker.celery_app import CHILD_READY

    log = service.log_tail("worker", 200_000)
    return " ready." in log and CHILD_READY in log


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the three measurements -------------------------------------------------------------------------------------------


def bench_upload(client, dataset_id: str, names: list[str], images: list[bytes], candidates, batch: int) -> float:
    """Post all images in batches of ``batch``; returns the seconds they took (every batch must answer 201)."""
    started = time.perf_counter()
    for lo in range(0, len(images), batch):
        idx = range(lo, min(lo + batch, len(images)))
        manifest = "".join(json.dumps({"file": names[i], "candidates": candidates[i]}) + "\n" for i in idx)
        files = [("manifest", ("manifest.jsonl", manifest.encode(), "application/x-ndjson"))]
        files += [("images", (names[i], images[i], "image/jpeg")) for i in idx]
        res = client.post(f"/datasets/{dataset_id}/items", files=files)
        if res.status_code != 201:
            raise RuntimeError(f"upload batch at {lo}: HTTP {res.status_code}: {res.text[:2000]}")
    return time.perf_counter() - started


def run_job(client, service: _Service, dataset_id: str, params: dict, timeout: float) -> tuple[dict, float]:
    """POST a job and poll it to the end; returns (the job, seconds from POST to seeing it succeeded)."""
    started = time.perf_counter()
    res = client.post(f"/datasets/{dataset_id}/jobs", json=params)
    if res.status_code != 202:
        raise RuntimeError(f"POST jobs: HTTP {res.status_code}: {res.text[:2000]}")
    job = res.json()
    deadline = time.monotonic() + timeout
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job['id']} still {job['status']} after {timeout:.0f} s")
        service.check_alive()
        time.sleep(0.5)  # a gentle poll: on 2 cores a tight one takes CPU from the training it measures
        job = client.get(f"/jobs/{job['id']}").json()
    elapsed = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}\n{service.log_tail('worker')}")
    return job, elapsed


def direct_training(cfg: ServiceBenchConfig, params: dict, paths: list[Path], shas, candidates, classes, work: Path):
    """The job's work done by calling ``ml/`` here (cold feature cache); returns (seconds, phase seconds)."""
    from ml.backbone import load_backbone
    from ml.ensemble import deployed_classifier
    from ml.export import export_classifier
    from ml.features import FeatureCache, encode_images
    from ml.knn_vote import prune_candidates
    from ml.pipeline import encoded_views, train_config
    from ml.train import candidates_to_mask, disambiguate, fit

    tcfg = train_config(params, None)
    views = encoded_views(int(params.get("views") or 1), tcfg)  # as the job encodes them
    phases: dict[str, float] = {}
    t = started = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = round(now - t, 3)
        t = now

    backbone = load_backbone(cfg.backbone, device=cfg.device, cache_dir=cfg.cache_dir)
    lap("loading_backbone")
    mask = candidates_to_mask(candidates, classes)
    cache = FeatureCache(work / "features")
    feats = encode_images(backbone, paths, shas=shas, views=views, cache=cache, seed=tcfg.seed)
    lap("encoding")
    train_mask = mask
    if params.get("knn_vote"):  # the job's defaults for the linear probe (app/job_defaults.py)
        train_mask = prune_candidates(feats[0], mask, int(params["knn_k"]), float(params["knn_tau"]))
    result = fit(backbone, feats, train_mask, classes, tcfg, device=cfg.device)
    lap("training")
    clf = deployed_classifier(
        backbone, result, classes, float(params.get("handcrafted_mix") or 0.0), params.get("templates")
    )
    disambiguate(feats[0], clf.class_features, clf.logit_scale, candidates=mask, bias=clf.bias)
    lap("labelling")
    export_classifier(backbone, clf.class_features, clf.logit_scale, classes, work / "export", class_bias=clf.bias)
    lap("exporting")
    return time.perf_counter() - started, phases


def job_phases(client, job: dict) -> dict[str, float]:
    """Seconds of each part of the job's run, from its timestamps and stage events (server clock).

    ``claimed`` runs from the claim (``started_at``) to the first stage: in a fresh worker child that is mostly the
    one-time import of torch / open_clip / ``ml`` (a warm worker pays it once, not per job).
    """
    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    marks = [("claimed", _ts(job["started_at"]))]
    marks += [(e["data"].get("stage"), _ts(e["created_at"])) for e in events if e["kind"] == "stage"]
    marks = [(s, t) for s, t in marks if s not in ("queued", "succeeded")] + [("end", _ts(job["finished_at"]))]
    return {s: round(t1 - t0, 3) for (s, t0), (_, t1) in zip(marks, marks[1:], strict=False)}


def _concurrently(clients: int, requests: int, call: Callable[[int, int], None]) -> tuple[float, list[float]]:
    """Run ``call(client, request)`` ``requests`` times in each of ``clients`` threads; (wall s, latencies s)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def worker(c: int) -> None:
        barrier.wait()
        try:
            for r in range(requests):
                t0 = time.perf_counter()
                call(c, r)
                latencies[c].append(time.perf_counter() - t0)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    barrier.wait()
    started = time.perf_counter()
    for th in threads:
        th.join(timeout=600)
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"predict: {errors[0]!r}") from errors[0]
    if any(th.is_alive() for th in threads):
        raise TimeoutError("predict clients did not finish within 600 s")
    return wall, [x for lat in latencies for x in lat]


def _multipart_predict(model_id: str, name: str, image: bytes) -> tuple[bytes, str]:
    """A ``POST /predict`` body (``model_id`` + one ``image`` part) and its Content-Type, encoded once."""
    boundary = "tagsift-bench-" + hashlib.sha256(image).hexdigest()[:16]
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model_id"\r\n\r\n{model_id}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def bench_predict_api(base_url: str, key: str, model_id: str, images: list[bytes], clients: int, requests: int):
    """``POST /predict`` (1 image) from ``clients`` threads, each on its own keep-alive connection.

    The load generator is kept light (``http.client``, request bodies encoded before the clock starts) because it
    shares the machine's cores with the API: what is measured is the service, not the client library."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    bodies = [_multipart_predict(model_id, f"p{i}.jpg", img) for i, img in enumerate(images)]
    conns = [http.client.HTTPConnection(url.hostname, url.port, timeout=120) for _ in range(clients)]
    try:

        def call(c: int, r: int) -> None:
            body, ctype = bodies[(c * requests + r) % len(bodies)]
            conns[c].request(
                "POST", "/predict", body=body, headers={"Authorization": f"Bearer {key}", "Content-Type": ctype}
            )
            res = conns[c].getresponse()
            data = res.read()
            if res.status != 200 or len(json.loads(data)["predictions"]) != 1:
                raise RuntimeError(f"POST /predict: HTTP {res.status}: {data[:500]!r}")

        for c in range(clients):  # warm-up: opens each connection, loads the model into the API's cache (untimed)
            call(c, 0)
        return _concurrently(clients, requests, call)
    finally:
        for conn in conns:
            conn.close()


def raw_predictor(
    model_dir: Path, images: list[bytes], threads: int, spinning: bool
) -> Callable[[int, int, int], None]:
    """``call(client, request, requests)``: ONNX Runtime on ``model.onnx`` with the API's decode + preprocessing,
    batch 1, one session shared by the threads (the session options the API uses)."""
    import numpy as np
    import onnxruntime as ort

    from app.imaging import PreprocessConfig, open_image, preprocess

    pre = PreprocessConfig.from_dict(json.loads((model_dir / "preprocess.json").read_text()))
    from app.predictor import session_options

    session = ort.InferenceSession(
        str(model_dir / "model.onnx"),
        sess_options=session_options(threads=threads, spinning=spinning),
        providers=["CPUExecutionProvider"],
    )
    inp, out = session.get_inputs()[0].name, session.get_outputs()[0].name

    def call(c: int, r: int, requests: int) -> None:
        i = (c * requests + r) % len(images)
        batch = np.stack([preprocess(open_image(images[i]), pre)])
        (logits,) = session.run([out], {inp: batch})
        int(np.argmax(logits[0]))

    call(0, 0, 1)  # warm-up, as for the API
    return call


def bench_predict_raw(call: Callable[[int, int, int], None], clients: int, requests: int):
    return _concurrently(clients, requests, lambda c, r: call(c, r, requests))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children that have been waited for (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _group_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every live process of its process group (``serve --workers N``)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pid:
                total += _cpu_seconds(int(entry.name))
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return total


# --- the run ----------------------------------------------------------------------------------------------------------


def load_images(cfg: ServiceBenchConfig):
    """``cfg.images`` CIFAR-10 training photos (balanced), their names and candidate sets (q protocol)."""
    from bench.data import CIFAR10_CLASSES, load_cifar10, partialize

    per_class = -(-cfg.images // len(CIFAR10_CLASSES))
    data = load_cifar10(cfg.cifar10_path, "train", per_class=per_class, seed=cfg.seed)
    keep = list(range(len(data.images)))[:: max(1, len(data.images) // cfg.images)][: cfg.images]
    images = [data.images[i] for i in keep]
    labels = data.labels[keep]
    masks = partialize(labels, len(CIFAR10_CLASSES), cfg.q, cfg.seed)
    classes = list(CIFAR10_CLASSES)
    candidates = [[classes[k] for k in range(len(classes)) if bool(row[k])] for row in masks]
    names = [f"img{i:05d}.jpg" for i in range(len(images))]
    return classes, names, images, candidates


@contextlib.contextmanager
def stopped_after(service: _Service, work: Path, *, keep: bool, out: Callable[[str], None]) -> Iterator[_Service]:
    """Stops the service's processes at the end (errors included), then removes ``work``, or prints it with --keep."""
    try:
        yield service
    finally:
        service.stop()
        if keep:
            out(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_service_bench(cfg: ServiceBenchConfig, out: Callable[[str], None] = print) -> ServiceBenchResult:
    import httpx

    if min(cfg.upload_batch, cfg.clients, cfg.requests, cfg.epochs, cfg.rounds, cfg.train_rounds) < 1 or cfg.images < 2:
        raise ValueError("images >= 2; upload_batch, clients, requests, epochs, rounds and train_rounds >= 1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    out(
        f"bench service: commit {commit.stdout.strip() or '?'}, {os.cpu_count()} CPUs, backbone {cfg.backbone},"
        f" device {cfg.device}, {'PostgreSQL + Redis' if cfg.database_url else 'embedded SQLite + SQLite broker'}"
    )
    t0 = time.perf_counter()
    classes, names, images, candidates = load_images(cfg)
    out(f"loaded {len(images)} CIFAR-10 photos with q={cfg.q} candidate sets ({time.perf_counter() - t0:.1f} s)")

    work = Path(tempfile.mkdtemp(prefix="tagsift-bench-service-"))
    data_dir = work / "var"
    env = service_env(
        data_dir,
        backbone=cfg.backbone,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        views=cfg.views,
        queue_prefix="bench",
        database_url=cfg.database_url,
        broker_url=cfg.broker_url,
        TAGSIFT_MAX_ITEMS_PER_REQUEST=str(max(50_000, cfg.upload_batch)),
        # the raw ONNX Runtime side uses this process's settings: the API must run with the same ones
        TAGSIFT_PREDICT_THREADS=str(Settings().predict_threads),
        TAGSIFT_PREDICT_SPINNING=str(Settings().predict_spinning).lower(),
    )
    # the job's params as the API will store them (its defaults, `auto` resolved); checked against the job below
    from app.job_defaults import resolve_job_params
    from app.schemas import JobCreate

    params = {"epochs": cfg.epochs, "views": cfg.views, "seed": cfg.seed, "device": "auto"}  # any worker
    job_params = resolve_job_params(JobCreate(**params).model_dump(), items=len(images), classes=len(classes))
    blob_dir = work / "direct-images"
    blob_dir.mkdir()
    paths = []
    for name, data in zip(names, images, strict=True):
        (blob_dir / name).write_bytes(data)
        paths.append(blob_dir / name)
    shas = [hashlib.sha256(data).hexdigest() for data in images]
    service = _Service(env, work, free_port())
    with stopped_after(service, work, keep=cfg.keep, out=out):
        key = service.up(owner="bench", api_workers=cfg.api_workers)
        out(f"service up: API {service.base_url}, worker ready, data dir {data_dir}")

        with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
            res = client.post("/datasets", json={"name": "bench-service", "classes": classes})
            if res.status_code != 201:
                raise RuntimeError(f"POST /datasets: HTTP {res.status_code}: {res.text[:2000]}")
            dataset_id = res.json()["id"]

            # 1. upload
            seconds = bench_upload(client, dataset_id, names, images, candidates, cfg.upload_batch)
            upload_rate = len(images) / seconds
            n_batches = -(-len(images) // cfg.upload_batch)
            out(
                f"upload: {len(images)} images in {n_batches} requests of <= {cfg.upload_batch}:"
                f" {seconds:.2f} s, {upload_rate:.1f} images/s"
            )

            # 2. training: rounds of (the work calling ml/ here, then one job through the service), both cold on
            # features (a fresh FeatureCache here; the worker's cache is emptied before each job), each side's
            # fastest run compared: a slow spell of this shared VM (seen: 10-15% for tens of seconds) then lands
            # on neither side in particular.
            direct_runs: list[tuple[float, dict]] = []
            jobs: list[tuple[float, dict, dict[str, float]]] = []  # (end to end s, job, stage seconds)
            for rnd in range(1, cfg.train_rounds + 1):
                direct_runs.append(
                    direct_training(cfg, job_params, paths, shas, candidates, classes, work / f"direct-{rnd}")
                )
                out(
                    f"train round {rnd}/{cfg.train_rounds}: ml/ direct (this process) {direct_runs[-1][0]:.2f} s;"
                    f" phases {json.dumps(direct_runs[-1][1])}"
                )
                shutil.rmtree(data_dir / "features", ignore_errors=True)  # the worker's feature cache
                job, e2e = run_job(client, service, dataset_id, params, cfg.job_timeout)
                if job["params"] != json.loads(json.dumps(job_params)):
                    raise RuntimeError(f"the job's params {job['params']} differ from the direct run's {job_params}")
                jobs.append((e2e, job, job_phases(client, job)))
                out(
                    f"train round {rnd}/{cfg.train_rounds}: service POST -> succeeded {e2e:.2f} s; queue wait"
                    f" {_ts(job['started_at']) - _ts(job['created_at']):.2f} s; run (started_at -> finished_at)"
                    f" {_ts(job['finished_at']) - _ts(job['started_at']):.2f} s; stages {json.dumps(jobs[-1][2])}"
                )
            e2e, job, phases = min(jobs, key=lambda run: run[0])
            direct_s, direct_phases = min(direct_runs, key=lambda run: run[0])
            queue_s = _ts(job["started_at"]) - _ts(job["created_at"])
            run_s = _ts(job["finished_at"]) - _ts(job["started_at"])
            overhead = 100.0 * (e2e - direct_s) / direct_s
            overhead_run = 100.0 * (run_s - direct_s) / direct_s
            warm = e2e - phases.get("claimed", 0.0)
            overhead_warm = 100.0 * (warm - direct_s) / direct_s
            out(
                f"train: fastest job {e2e:.2f} s end to end (run {run_s:.2f} s), fastest direct run {direct_s:.2f} s"
                f" (of {cfg.train_rounds} each)"
            )
            out(
                f"train overhead: {overhead:.1f}% end to end (target <= 10%), {overhead_run:.1f}% without the"
                f" queue wait and polling (job started_at -> finished_at), {overhead_warm:.1f}% end to end without"
                f" the worker child's first-job imports ({phases.get('claimed', 0.0):.2f} s; this process had"
                f" imported torch already)"
            )

            # 3. predict: the API against ONNX Runtime called directly on the exported model
            model_id = job["model_id"]
            res = client.get(f"/models/{model_id}/export", params={"merged": "true"})  # one model.onnx
            res.raise_for_status()
            model_dir = work / "model"
            with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
                zf.extractall(model_dir)
        n_pred = min(len(images), cfg.clients * cfg.requests)
        pred_images = images[:n_pred]
        api_settings = Settings()  # the predict settings the API process was started with (passed to it above)
        raw_call = raw_predictor(model_dir, pred_images, api_settings.predict_threads, api_settings.predict_spinning)
        api_pid = service.pid("api")
        total = cfg.clients * cfg.requests
        # API and raw rounds alternate, so that a change in the machine's load hits both sides alike; the medians
        # of the rounds are compared. CPU seconds per request (the API's process group; this process for the raw
        # calls) are printed too: they move less than throughput when other work shares the cores.
        api_rounds: list[tuple[float, list[float], float]] = []
        raw_rounds: list[tuple[float, list[float], float]] = []
        for rnd in range(cfg.rounds):
            cpu0 = _group_cpu_seconds(api_pid)
            wall, lat = bench_predict_api(service.base_url, key, model_id, pred_images, cfg.clients, cfg.requests)
            api_rounds.append((wall, lat, (_group_cpu_seconds(api_pid) - cpu0) / total))
            cpu0 = time.process_time()
            wall, lat = bench_predict_raw(raw_call, cfg.clients, cfg.requests)
            raw_rounds.append((wall, lat, (time.process_time() - cpu0) / total))
            out(
                f"predict round {rnd + 1}/{cfg.rounds}: API {total / api_rounds[-1][0]:.1f} req/s"
                f" ({1000 * api_rounds[-1][2]:.2f} CPU ms/req in the API), raw {total / raw_rounds[-1][0]:.1f} calls/s"
                f" ({1000 * raw_rounds[-1][2]:.2f} CPU ms/call)"
            )
        api_wall = statistics.median(r[0] for r in api_rounds)
        raw_wall = statistics.median(r[0] for r in raw_rounds)
        api_lat = [x for r in api_rounds for x in r[1]]
        raw_lat = [x for r in raw_rounds for x in r[1]]
        api_cpu = statistics.median(r[2] for r in api_rounds)
        raw_cpu = statistics.median(r[2] for r in raw_rounds)
        api_rps, raw_rps = total / api_wall, total / raw_wall
        result = ServiceBenchResult(
            upload_images_per_s=upload_rate,
            predict_api_rps=api_rps,
            predict_raw_rps=raw_rps,
            p50_ms=1000 * percentile(api_lat, 50),
            p99_ms=1000 * percentile(api_lat, 99),
            raw_p50_ms=1000 * percentile(raw_lat, 50),
            raw_p99_ms=1000 * percentile(raw_lat, 99),
            train_e2e_s=e2e,
            train_run_s=run_s,
            train_queue_s=queue_s,
            train_direct_s=direct_s,
            extra={
                "train_overhead_warm": overhead_warm,
                "job_phases": phases,
                "direct_phases": direct_phases,
                "job_id": job["id"],
                "model_id": model_id,
                "predict_api_cpu_ms": 1000 * api_cpu,
                "predict_raw_cpu_ms": 1000 * raw_cpu,
            },
        )
        out(
            f"predict (API): {total} requests of 1 image from {cfg.clients} clients per round, median of"
            f" {cfg.rounds} rounds: {api_wall:.2f} s, {api_rps:.1f} req/s, p50 {result.p50_ms:.1f} ms,"
            f" p99 {result.p99_ms:.1f} ms, mean {1000 * statistics.fmean(api_lat):.1f} ms;"
            f" {1000 * api_cpu:.2f} CPU ms per request in the API process(es)"
        )
        out(
            f"predict (ONNX Runtime direct): {total} calls of 1 image from {cfg.clients} threads per round, median"
            f" of {cfg.rounds} rounds: {raw_wall:.2f} s, {raw_rps:.1f} calls/s, p50 {result.raw_p50_ms:.1f} ms,"
            f" p99 {result.raw_p99_ms:.1f} ms; {1000 * raw_cpu:.2f} CPU ms per call"
        )
        out(f"predict CPU: the raw call's CPU time is {100 * raw_cpu / api_cpu:.1f}% of the API request's")
        out(f"predict ratio: {result.predict_ratio:.1f}% of the raw throughput (target >= 80%)")
        out(result.summary())
        return result
