"""``tagsift bench client``: uploading a folder of photos with the Python client against the project's own fastest
raw-HTTP path.

The photos are CIFAR-10 test JPEGs (10,000 by default, ``--images`` for fewer), written to a folder with a CSV
manifest (each photo's true class and two others as candidates, seeded). Each path uploads the whole folder into a
fresh service of its own (``tagsift serve``, SQLite or ``--database-url``; a new data dir, so neither finds the
other's blobs stored):

- **raw**: what ``bench/scale.py`` and ``bench/service.py`` do, with the batch size that is the faster of the two
  (1,000 images per request, as ``bench scale``): an empty dataset (``POST /datasets`` with JSON), then the photos
  read from the folder and posted to ``POST /datasets/{id}/items`` batch after batch, with a JSONL manifest built in
  memory, one keep-alive connection, no retries, no Idempotency-Key;
- **client**: ``tagsift_client.Client.upload(folder, manifest.csv, name=...)``: the manifest read and checked
  against the folder, the first chunk to ``POST /datasets``, the rest to ``POST /datasets/{id}/items``, each with its
  Idempotency-Key (the server hashes every image for the request's fingerprint and stores the answer), progress off.

Both are timed from the first byte read to the last answer. The last line is exactly
``client upload images=<n> client_ips=<x> raw_ips=<y> ratio=<x/y>`` (goal: ratio >= 0.9).
"""

from __future__ import annotations

import csv
import json
import random
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.scale import fresh_database
from bench.service import _Service, free_port, service_env

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class ClientBenchConfig:
    images: int = 10_000
    batch: int = 1_000  # images per request, both paths
    rounds: int = 1  # each path this many times (alternating, raw first); the best rate of each is reported
    seed: int = 0
    database_url: str = ""
    keep: bool = False


def write_photos(cifar10_path: Path, folder: Path, n: int, seed: int) -> Path:
    """The first ``n`` test JPEGs of the archive (class by class, file order) in ``folder``, and manifest.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    with tarfile.open(cifar10_path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if parts and parts[0] in (".", ""):
                parts = parts[1:]
            if not member.isfile() or len(parts) != 3 or parts[0] != "test" or parts[1] not in CLASSES:
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            name = f"{parts[1]}_{parts[2]}"
            (folder / name).write_bytes(f.read())
            others = rng.sample([c for c in CLASSES if c != parts[1]], 2)
            rows.append((name, "|".join(sorted([parts[1], *others]))))
            if len(rows) >= n:
                break
    if len(rows) < n:
        raise ValueError(f"{cifar10_path}: only {len(rows)} test JPEGs, {n} asked")
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "candidates"])
        writer.writerows(rows)
    return manifest


def raw_upload(base_url: str, key: str, folder: Path, manifest: Path, batch: int) -> float:
    """The raw-HTTP path (see the module docstring); returns its seconds."""
    import httpx

    started = time.perf_counter()
    with manifest.open(newline="") as fh:
        rows = [(r["file"], r["candidates"].split("|")) for r in csv.DictReader(fh)]
    classes = sorted({c for _, cands in rows for c in cands})
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as http:
        res = http.post("/datasets", json={"name": "raw", "classes": classes})
        if res.status_code != 201:
            raise RuntimeError(f"create: HTTP {res.status_code}: {res.text[:1000]}")
        dataset_id = res.json()["id"]
        for lo in range(0, len(rows), batch):
            part = rows[lo : lo + batch]
            text = "".join(json.dumps({"file": f, "candidates": c}) + "\n" for f, c in part)
            files = [("manifest", ("manifest.jsonl", text.encode(), "application/x-ndjson"))]
            files += [("images", (f, (folder / f).read_bytes(), "image/jpeg")) for f, _ in part]
            res = http.post(f"/datasets/{dataset_id}/items", files=files)
            if res.status_code != 201:
                raise RuntimeError(f"batch at {lo}: HTTP {res.status_code}: {res.text[:1000]}")
        stored = http.get(f"/datasets/{dataset_id}").json()["item_count"]
    elapsed = time.perf_counter() - started
    if stored != len(rows):
        raise RuntimeError(f"raw: {stored} items stored of {len(rows)}")
    return elapsed


def client_upload(base_url: str, key: str, folder: Path, manifest: Path, batch: int) -> float:
    """The client's path: one call; returns its seconds."""
    from tagsift_client import Client

    started = time.perf_counter()
    with Client(base_url, key, timeout=600) as client:
        result = client.upload(folder, manifest, name="client", chunk_images=batch, progress=False)
        stored = client.dataset(result.dataset_id)["item_count"]
    elapsed = time.perf_counter() - started
    n = sum(1 for _ in manifest.open()) - 1
    if stored != n or result.added != n:
        raise RuntimeError(f"client: {stored} items stored ({result.added} added) of {n}")
    return elapsed


def _timed_on_fresh_service(work: Path, cfg: ClientBenchConfig, run: Callable[[str, str], float], label: str) -> float:
    env = service_env(
        work / f"var-{label}",
        backbone="reference",
        cache_dir=work / "models",
        device="cpu",
        views=1,
        queue_prefix="bench-client",
        database_url="",
        broker_url="",
    )
    if cfg.database_url:
        env["TAGSIFT_DATABASE_URL"] = cfg.database_url
    service = _Service(env, work, free_port())
    try:
        service.run("migrate")
        key = service.run("create-api-key", "--owner", f"bench-{uuid.uuid4().hex[:8]}").strip().splitlines()[-1]
        service.start(f"api-{label}", "serve", "--port", str(service.port))
        service.wait_until(lambda: _healthy(service.base_url), 90, "the API")
        return run(service.base_url, key)
    finally:
        service.stop()


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_client_bench(cfg: ClientBenchConfig, *, cifar10_path: Path, out: Callable[[str], None] = print) -> str:
    work = Path(tempfile.mkdtemp(prefix="tagsift-bench-client-"))
    try:
        folder = work / "photos"
        manifest = write_photos(cifar10_path, folder, cfg.images, cfg.seed)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        db = "PostgreSQL" if cfg.database_url else "SQLite"
        out(f"bench client: {cfg.images} CIFAR-10 JPEGs ({size:.1f} MiB) in batches of {cfg.batch}, {db}")
        rates: dict[str, list[float]] = {"raw": [], "client": []}
        for r in range(cfg.rounds):
            for label, fn in (("raw", raw_upload), ("client", client_upload)):
                admin = cfg.database_url
                drop = None
                if admin:
                    url, drop = fresh_database(admin, prefix="bench_client")
                    cfg_round = ClientBenchConfig(**{**cfg.__dict__, "database_url": url})
                else:
                    cfg_round = cfg
                try:
                    seconds = _timed_on_fresh_service(
                        work,
                        cfg_round,
                        lambda base, key, fn=fn: fn(base, key, folder, manifest, cfg.batch),
                        f"{label}-{r}",
                    )
                finally:
                    if drop is not None:
                        drop()
                rates[label].append(cfg.images / seconds)
                out(f"  round {r + 1} {label}: {seconds:.2f} s, {cfg.images / seconds:.0f} images/s")
        client_ips, raw_ips = max(rates["client"]), max(rates["raw"])
        line = (
            f"client upload images={cfg.images} client_ips={client_ips:.1f} raw_ips={raw_ips:.1f}"
            f" ratio={client_ips / raw_ips:.3f}"
        )
        out(line)
        return line
    finally:
        if cfg.keep:
            out(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
