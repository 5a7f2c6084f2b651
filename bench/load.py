"""``tagsift bench load``: N concurrent clients upload and poll a real service of its own, bounded, zero errors.

It starts a service the way ``tagsift bench service`` does (its helpers in :mod:`bench.service`: a temp data
dir, the embedded SQLite + SQLite broker or the given PostgreSQL and Redis, ``tagsift serve`` on a free loopback
port and one ``tagsift worker``), then runs ``clients`` threads, each with its own HTTP connection (httpx) and its
own dataset, for ``duration`` seconds. Each client loops:

1. ``upload``: ``POST /datasets/{id}/items`` with ``batch`` new PNG images and their candidate sets;
2. ``list_items``: ``GET /datasets/{id}/items?limit=50``;
3. ``get_dataset``: ``GET /datasets/{id}``;  4. ``labels``: ``GET /datasets/{id}/labels``;
5. every ``job_every``-th round with no job of its own running: ``create_job`` (``POST /datasets/{id}/jobs``, a
   cheap ``zero_shot`` job for the worker); every round while it has one: ``get_job`` (``GET /jobs/{id}``).

(Plus one ``create_dataset`` per client at the start.) Any status other than the expected one, and any transport
error or timeout, is an error. Every request has a timeout; no request starts after ``duration``, and the run has a
hard deadline one request timeout (+5 s) later: a client still busy then is an error too. Printed: per operation
the count, errors and p50 / p99 / max latency, the same overall, and requests/s; the return value says whether
there were errors (the command exits 1).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.service import ServiceOptions, _Service, free_port, percentile, service_env, stopped_after

CLASSES = ["red", "green", "blue"]
OPERATIONS = ("create_dataset", "upload", "list_items", "get_dataset", "labels", "create_job", "get_job")
EXPECTED = {"create_dataset": 201, "upload": 201, "create_job": 202}  # the rest: 200

#: A tiny random-init open_clip model (ModifiedResNet image tower, 1-layer text transformer), for machines
#: without the reference backbone build: the jobs stay cheap, the load stays on the API.
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass
class LoadBenchConfig(ServiceOptions):
    cache_dir: Path
    clients: int = 50
    duration: float = 60.0
    batch: int = 4  # images per upload
    job_every: int = 10  # a client starts a job every this many rounds (when it has none running)
    backbone: str = "auto"  # "auto": the reference backbone when its build is in cache_dir, else TINY_CLIP
    request_timeout: float = 30.0


@dataclass
class OpStats:
    latencies: list[float] = field(default_factory=list)  # seconds, of the requests that answered as expected
    errors: int = 0


@dataclass
class LoadBenchResult:
    ops: dict[str, OpStats]
    wall_s: float
    errors: list[str]  # the first few error messages
    jobs: dict[str, int]  # final status -> count of the jobs the clients started
    stuck: int = 0  # clients still in a request at the hard deadline (each counts as an error)

    @property
    def total_requests(self) -> int:
        return sum(len(s.latencies) + s.errors for s in self.ops.values())

    @property
    def total_errors(self) -> int:
        return sum(s.errors for s in self.ops.values()) + self.stuck


def resolve_backbone(backbone: str, cache_dir: Path, work: Path) -> str:
    """``auto``: ``reference`` when a complete reference build is cached in ``cache_dir``, else the tiny config."""
    if backbone != "auto":
        return backbone
    from ml.reference import BUILD_FILE, CHECKPOINT_FILE, reference_dir

    folder = reference_dir(cache_dir)
    if (folder / BUILD_FILE).is_file() and (folder / CHECKPOINT_FILE).is_file():
        return "reference"
    path = work / "tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    return str(path)


def png(client: int, n: int) -> bytes:
    """A small PNG whose bytes are unique per (client, n): mostly one colour, a few pixels encode the pair."""
    from PIL import Image

    color = [(200, 30, 30), (30, 200, 30), (30, 30, 200)][n % 3]
    img = Image.new("RGB", (32, 32), color)
    for i, value in enumerate((client % 256, client // 256, n % 256, (n // 256) % 256, (n // 65536) % 256)):
        img.putpixel((i, 0), (value, value, value))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _Stop(Exception):
    """The run's duration is over."""


class _Recorder:
    """The latencies and errors of every client (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stats = {op: OpStats() for op in OPERATIONS}
        self.errors: list[str] = []

    def ok(self, op: str, seconds: float) -> None:
        with self.lock:
            self.stats[op].latencies.append(seconds)

    def error(self, op: str | None, message: str) -> None:
        with self.lock:
            if op is not None:
                self.stats[op].errors += 1
            if len(self.errors) < 20:
                self.errors.append(message)

    def snapshot(self) -> tuple[dict[str, OpStats], list[str]]:
        """A copy (a client stuck past the deadline may still write)."""
        with self.lock:
            return {op: OpStats(list(s.latencies), s.errors) for op, s in self.stats.items()}, list(self.errors)


class _Client:
    """One simulated user: its own connection, dataset and job; every request goes to the recorder."""

    def __init__(self, index: int, base_url: str, key: str, cfg: LoadBenchConfig, rec: _Recorder, stop_at: float):
        import httpx

        self.index, self.cfg, self.rec, self.stop_at = index, cfg, rec, stop_at
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(cfg.request_timeout),
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self.dataset_id: str | None = None
        self.job_id: str | None = None
        self.jobs: list[str] = []
        self.images = 0

    def request(self, op: str, method: str, url: str, **kwargs):
        """Send one request: the response when it answered as expected, else None (an error, recorded).

        Past the end of the run it sends nothing (:class:`_Stop`): at most one request per client is in flight
        after the deadline, and it has its timeout.
        """
        import httpx

        if time.monotonic() >= self.stop_at:
            raise _Stop
        started = time.perf_counter()
        try:
            res = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.rec.error(op, f"{op} {method} {url}: {type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - started
        if res.status_code != EXPECTED.get(op, 200):
            self.rec.error(op, f"{op} {method} {url}: HTTP {res.status_code}: {res.text[:300]}")
            return None
        self.rec.ok(op, elapsed)
        return res

    def run(self) -> None:
        try:
            res = self.request(
                "create_dataset", "POST", "/datasets", json={"name": f"load-{self.index}", "classes": CLASSES}
            )
            if res is None:
                return
            self.dataset_id = res.json()["id"]
            rounds = 0
            while True:
                self.round(rounds)
                rounds += 1
        except _Stop:
            pass
        finally:
            self.http.close()

    def round(self, rounds: int) -> None:
        ds = f"/datasets/{self.dataset_id}"
        names, files, rows = [], [], []
        for _ in range(self.cfg.batch):
            n = self.images
            self.images += 1
            name = f"c{self.index}-{n}.png"
            names.append(name)
            files.append(("images", (name, png(self.index, n), "image/png")))
            rows.append({"file": name, "candidates": [CLASSES[n % 3], CLASSES[(n + 1) % 3]]})
        manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
        self.request("upload", "POST", f"{ds}/items", files=[("manifest", ("manifest.jsonl", manifest)), *files])
        self.request("list_items", "GET", f"{ds}/items", params={"limit": 50})
        self.request("get_dataset", "GET", ds)
        self.request("labels", "GET", f"{ds}/labels")
        if self.job_id is None and rounds % self.cfg.job_every == 0:
            res = self.request("create_job", "POST", f"{ds}/jobs", json={"method": "zero_shot"})
            if res is not None:
                self.job_id = res.json()["id"]
                self.jobs.append(self.job_id)
        elif self.job_id is not None:
            res = self.request("get_job", "GET", f"/jobs/{self.job_id}")
            if res is not None and res.json()["status"] in ("succeeded", "failed", "cancelled"):
                self.job_id = None


def _service_env(cfg: LoadBenchConfig, data_dir: Path, backbone: str) -> dict[str, str]:
    return service_env(
        data_dir,
        backbone=backbone,
        cache_dir=cfg.cache_dir,
        device="cpu",
        views=1,
        queue_prefix="bench-load",
        database_url=cfg.database_url,
        broker_url=cfg.broker_url,
    )


def format_report(result: LoadBenchResult, clients: int) -> list[str]:
    def row(name: str, stats: OpStats) -> str:
        lat = stats.latencies
        figures = (
            f"p50 {1000 * percentile(lat, 50):8.1f}  p99 {1000 * percentile(lat, 99):8.1f}  max {1000 * max(lat):8.1f}"
            if lat
            else f"p50 {'-':>8}  p99 {'-':>8}  max {'-':>8}"
        )
        return f"  {name:<15} {len(lat) + stats.errors:>7} {stats.errors:>7}  {figures}"

    overall = OpStats([x for s in result.ops.values() for x in s.latencies], result.total_errors)
    lines = [f"  {'operation':<15} {'count':>7} {'errors':>7}  latency ms"]
    lines += [row(op, result.ops[op]) for op in OPERATIONS]
    lines.append(row("overall", overall))
    rps = result.total_requests / result.wall_s if result.wall_s > 0 else 0.0
    lines.append(
        f"load: {clients} clients, {result.wall_s:.1f} s, {result.total_requests} requests, {rps:.1f} requests/s,"
        f" {result.total_errors} errors; jobs started {sum(result.jobs.values())}"
        f" ({', '.join(f'{k} {v}' for k, v in sorted(result.jobs.items())) or 'none'})"
    )
    return lines


def run_load_bench(cfg: LoadBenchConfig, out: Callable[[str], None] = print) -> LoadBenchResult:
    import httpx

    if cfg.clients < 1 or cfg.duration <= 0 or cfg.batch < 1 or cfg.job_every < 1 or cfg.request_timeout <= 0:
        raise ValueError("clients, batch, job_every >= 1; duration and request_timeout > 0")
    work = Path(tempfile.mkdtemp(prefix="tagsift-bench-load-"))
    data_dir = work / "var"
    backbone = resolve_backbone(cfg.backbone, Path(cfg.cache_dir), work)
    backend = "PostgreSQL + Redis" if cfg.database_url else "embedded SQLite + SQLite broker"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    out(
        f"bench load: {cfg.clients} clients x {cfg.duration:.0f} s, {os.cpu_count()} CPUs (load average {load}),"
        f" {backend}, backbone {backbone if backbone == 'reference' else 'tiny (random init)'},"
        f" {cfg.api_workers} API process(es) + 1 worker, {cfg.batch} images per upload,"
        f" request timeout {cfg.request_timeout:.0f} s"
    )
    service = _Service(_service_env(cfg, data_dir, backbone), work, free_port())
    with stopped_after(service, work, keep=cfg.keep, out=out):
        key = service.up(owner="load", api_workers=cfg.api_workers)
        out(f"service up: API {service.base_url}, worker ready, data dir {data_dir}")

        rec = _Recorder()
        started = time.monotonic()
        stop_at = started + cfg.duration
        clients = [_Client(i, service.base_url, key, cfg, rec, stop_at) for i in range(cfg.clients)]
        threads = [threading.Thread(target=c.run, name=f"load-client-{c.index}", daemon=True) for c in clients]
        for th in threads:
            th.start()
        hard_deadline = stop_at + cfg.request_timeout + 5  # each client's last request may still be in flight
        for th in threads:
            th.join(timeout=max(0.0, hard_deadline - time.monotonic()))
        wall = time.monotonic() - started
        stuck = [th.name for th in threads if th.is_alive()]
        if stuck:
            rec.error(None, f"{len(stuck)} clients still busy at the hard deadline: {', '.join(stuck[:5])}")
        service.check_alive()  # the API and the worker are still up

        jobs: dict[str, int] = {}
        with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            for job_id in [j for c in clients for j in c.jobs]:
                status = http.get(f"/jobs/{job_id}").json()["status"]
                jobs[status] = jobs.get(status, 0) + 1
        ops, messages = rec.snapshot()
        result = LoadBenchResult(ops=ops, wall_s=wall, errors=messages, jobs=jobs, stuck=len(stuck))
        for line in format_report(result, cfg.clients):
            out(line)
        for message in result.errors:
            out(f"error: {message}")
        return result
