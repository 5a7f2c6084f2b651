"""``tagsift bench encode``: a dataset's encoding on one worker, on two workers sharing its shards, and the backbone's
raw rate on pre-decoded tensors.

It starts a service of its own (:mod:`bench.service`: a temp data dir, the embedded SQLite + SQLite broker or the
given PostgreSQL and Redis, ``tagsift serve``, ``tagsift worker`` processes with ``threads`` torch threads each,
``OMP_NUM_THREADS``), uploads ``images`` CIFAR-10 photos (or generated ones) through the API, and measures:

1. **one worker**: a job on the dataset with one worker running; its encoding time is the job's own, from its
   ``encoding`` stage event to its ``training`` one (server clock), which covers the shard rows, decoding, the model,
   the feature cache writes and reading the merged features back. The worker has run a small job first (its
   backbone is loaded, as in a worker that has served a job before).
2. **two workers**: the feature cache emptied, a second worker started and warmed the same way (a job of two
   shards), then the same job again: the two workers share its shards (the ``shards`` event says who encoded
   which).
3. **raw**: the backbone in this process, on the same number of torch threads, on ``raw_images`` of the photos
   decoded and preprocessed beforehand, in batches of ``TAGSIFT_ENCODE_BATCH_SIZE``: what the model alone encodes
   per second, measured before and after the jobs (the faster counts: the ratio is not flattered by a slow spell
   of a shared machine). For reference also ``ml.features.encode_images`` on the same images with and without the
   decode threads.

Printed last: ``encode images=N two_workers_speedup=X one_worker_vs_raw=P%`` (goals: >= 1.7, >= 90%).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.service import ROOT, ServiceOptions, _Service, _ts, bench_upload, free_port, run_job, service_env

#: The job's params: encoding is what is measured, training is one short epoch.
PARAMS = {"method": "coop", "loss": "rc", "epochs": 1, "batch_size": 64, "lr": 0.01, "n_ctx": 4, "views": 1, "seed": 1}


@dataclass
class EncodeBenchConfig(ServiceOptions):
    cache_dir: Path
    cifar10_path: Path | None  # None: generated images
    backbone: str = "reference"
    images: int = 2000
    raw_images: int = 256
    threads: int = 1  # torch threads of each worker and of the raw measurement
    shard_images: int | None = None  # None: TAGSIFT_ENCODE_SHARD_IMAGES
    device: str = "cpu"
    job_timeout: float = 1800.0


@dataclass
class EncodeRun:
    seconds: float  # encoding stage, server clock
    shards: dict  # the job's ``shards`` event (empty when the images fit one shard)

    def rate(self, images: int) -> float:
        return images / self.seconds


def _generated(n: int, offset: int) -> list[bytes]:
    """``n`` distinct 32x32 JPEG photos-like images (noise around a colour), for machines without CIFAR-10."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(offset, offset + n):
        rng = np.random.default_rng(i)
        base = rng.integers(0, 255, 3)
        arr = np.clip(rng.normal(0, 40, (32, 32, 3)) + base, 0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def load_sets(cfg: EncodeBenchConfig, warm: int) -> tuple[list[str], list[bytes], list[int], list[list[bytes]]]:
    """(classes, timed images, their label indices, [warm-up images of worker 1, of worker 2]): CIFAR-10 train photos
    for the timed set and test photos for the warm-ups (all distinct), or generated images."""
    if cfg.cifar10_path is None:
        classes = ["a", "b", "c"]
        images = _generated(cfg.images, 0)
        return classes, images, [i % 3 for i in range(cfg.images)], [_generated(8, 10**6), _generated(warm, 2 * 10**6)]
    from bench.data import CIFAR10_CLASSES, load_cifar10

    per_class = -(-cfg.images // len(CIFAR10_CLASSES))
    train = load_cifar10(cfg.cifar10_path, "train", per_class=per_class, seed=1)
    test = load_cifar10(cfg.cifar10_path, "test", per_class=-(-(warm + 8) // len(CIFAR10_CLASSES)), seed=1)
    labels = [int(x) for x in train.labels[: cfg.images]]
    return list(CIFAR10_CLASSES), train.images[: cfg.images], labels, [test.images[:8], test.images[8 : 8 + warm]]


def _candidates(classes: list[str], labels: list[int]) -> list[list[str]]:
    """The true tag and the next one: two candidates per image (the encoding does not depend on them)."""
    return [sorted({classes[k], classes[(k + 1) % len(classes)]}) for k in labels]


def _upload(client, name: str, classes: list[str], images: list[bytes], labels: list[int]) -> str:
    res = client.post("/datasets", json={"name": name, "classes": classes})
    if res.status_code != 201:
        raise RuntimeError(f"POST /datasets: HTTP {res.status_code}: {res.text[:2000]}")
    dataset_id = res.json()["id"]
    names = [f"{name}-{i:05d}.jpg" for i in range(len(images))]
    bench_upload(client, dataset_id, names, images, _candidates(classes, labels), 250)
    return dataset_id


def _encode_run(client, service: _Service, dataset_id: str, timeout: float) -> EncodeRun:
    job, _ = run_job(client, service, dataset_id, PARAMS, timeout)
    events = client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    stages = {e["data"].get("stage"): _ts(e["created_at"]) for e in events if e["kind"] == "stage"}
    shards = next((e["data"] for e in events if e["kind"] == "shards"), {})
    return EncodeRun(stages["training"] - stages["encoding"], shards)


def _ready(service: _Service, name: str) -> bool:
    from worker.celery_app import CHILD_READY

    log = service.log_tail(name, 200_000)
    return " ready." in log and CHILD_READY in log


def _workers(shards: dict) -> str:
    counts = sorted((shards.get("encoded_by") or {}).values(), reverse=True)
    return f"{shards.get('shards', 0)} shards: {' + '.join(map(str, counts)) or 'none'}"


def _load_backbone(cfg: EncodeBenchConfig):
    import torch

    from ml.backbone import load_backbone

    torch.set_num_threads(cfg.threads)
    return load_backbone(cfg.backbone, device=cfg.device, cache_dir=cfg.cache_dir)


def raw_rate(backbone, images: list[bytes], batch_size: int) -> float:
    """Images/s of the backbone alone on ``images`` decoded and preprocessed beforehand, in batches."""
    import torch
    from PIL import Image

    pixels = torch.stack([backbone.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    backbone.encode_image(pixels[:batch_size])  # warm-up (first-call allocations)
    started = time.perf_counter()
    for lo in range(0, len(images), batch_size):
        backbone.encode_image(pixels[lo : lo + batch_size])
    return len(images) / (time.perf_counter() - started)


def in_process_rates(backbone, images: list[bytes], batch_size: int, decode_threads: int) -> dict[int, float]:
    """Images/s of ``ml.features.encode_images`` (no cache) with 0 and ``decode_threads`` decode threads."""
    from ml.features import encode_images

    rates = {}
    for threads in (0, decode_threads):
        started = time.perf_counter()
        encode_images(backbone, images, batch_size=batch_size, decode_workers=threads)
        rates[threads] = len(images) / (time.perf_counter() - started)
    return rates


def run_encode_bench(cfg: EncodeBenchConfig, out: Callable[[str], None] = print) -> tuple[float, float]:
    """Run the benchmark (see the module docstring); returns (two-worker speedup, one worker's share of raw)."""
    import httpx

    from app.config import Settings

    defaults = Settings()
    shard = cfg.shard_images if cfg.shard_images is not None else defaults.encode_shard_images
    batch, decode = defaults.encode_batch_size, defaults.decode_threads
    if cfg.images <= shard or cfg.raw_images < 1 or cfg.threads < 1:
        raise ValueError(f"images must exceed the shard size ({shard}); raw_images and threads >= 1")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    source = f"CIFAR-10 photos ({cfg.cifar10_path})" if cfg.cifar10_path else "generated 32x32 JPEG images"
    out(
        f"bench encode: commit {commit.stdout.strip() or '?'}, {os.cpu_count()} CPUs, load average"
        f" {os.getloadavg()[0]:.2f}, backbone {cfg.backbone}, device {cfg.device}, {cfg.threads} torch thread(s) per"
        f" worker, shards of {shard} images, batches of {batch}, {decode} decode threads,"
        f" {'PostgreSQL + Redis' if cfg.database_url else 'embedded SQLite + SQLite broker'}"
    )
    classes, images, labels, (warm1, warm2) = load_sets(cfg, shard + 1)
    out(f"images: {len(images)} {source}, 1 view each")
    backbone = _load_backbone(cfg)
    raw_before = raw_rate(backbone, images[: cfg.raw_images], batch)
    out(f"raw backbone (before the jobs): {raw_before:.1f} images/s")

    work = Path(tempfile.mkdtemp(prefix="tagsift-bench-encode-"))
    data_dir = work / "var"
    threads = str(cfg.threads)
    env = service_env(
        data_dir,
        backbone=cfg.backbone,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        views=1,
        queue_prefix="bench-encode",
        database_url=cfg.database_url,
        broker_url=cfg.broker_url,
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        TAGSIFT_ENCODE_SHARD_IMAGES=str(shard),
        TAGSIFT_ENCODE_BATCH_SIZE=str(batch),  # this process's settings (the raw rate uses them too)
        TAGSIFT_DECODE_THREADS=str(decode),
    )
    service = _Service(env, work, free_port())
    try:
        key = service.up(owner="bench", api_workers=cfg.api_workers)
        with httpx.Client(base_url=service.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
            started = time.perf_counter()
            timed = _upload(client, "timed", classes, images, labels)
            warm_1 = _upload(client, "warm-1", classes, warm1, [i % len(classes) for i in range(len(warm1))])
            warm_2 = _upload(client, "warm-2", classes, warm2, [i % len(classes) for i in range(len(warm2))])
            out(f"uploaded {len(images) + len(warm1) + len(warm2)} images ({time.perf_counter() - started:.1f} s)")

            _encode_run(client, service, warm_1, cfg.job_timeout)  # worker 1 loads its backbone
            one = _encode_run(client, service, timed, cfg.job_timeout)
            out(
                f"one worker:  encoding {one.seconds:.1f} s, {one.rate(len(images)):.1f} images/s"
                f" ({_workers(one.shards)})"
            )

            service.start("worker-2", "worker", "--concurrency", "1")
            service.wait_until(lambda: _ready(service, "worker-2"), 180, "worker 2")
            warm = _encode_run(client, service, warm_2, cfg.job_timeout)  # two shards: both workers load theirs
            if len((warm.shards or {}).get("encoded_by") or {}) < 2:
                out(f"note: the warm-up job's shards went to one worker only ({_workers(warm.shards)})")
            shutil.rmtree(data_dir / "features", ignore_errors=True)  # cold again: the same images are encoded
            two = _encode_run(client, service, timed, cfg.job_timeout)
            out(
                f"two workers: encoding {two.seconds:.1f} s, {two.rate(len(images)):.1f} images/s"
                f" ({_workers(two.shards)})"
            )
    finally:
        service.stop()
        if cfg.keep:
            out(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    raw_after = raw_rate(backbone, images[: cfg.raw_images], batch)
    raw = max(raw_before, raw_after)
    out(
        f"raw backbone: {raw:.1f} images/s on {cfg.raw_images} pre-decoded tensors (batches of {batch},"
        f" {cfg.threads} torch thread(s), this process; the faster of before {raw_before:.1f} and after"
        f" {raw_after:.1f})"
    )
    rates = in_process_rates(backbone, images[: cfg.raw_images], batch, decode)
    out(
        f"encode_images in this process: {rates[0]:.1f} images/s decoding between model calls,"
        f" {rates[decode]:.1f} images/s with {decode} decode threads"
    )
    out(f"load average at the end: {os.getloadavg()[0]:.2f}")
    speedup = two.rate(len(images)) / one.rate(len(images))
    share = 100.0 * one.rate(len(images)) / raw
    out(f"encode images={len(images)} two_workers_speedup={speedup:.2f} one_worker_vs_raw={share:.1f}%")
    return speedup, share


SUMMARY = re.compile(r"^encode images=(\d+) two_workers_speedup=([\d.]+) one_worker_vs_raw=([\d.]+)%$", re.MULTILINE)


def parse_summary(text: str) -> dict:
    """The last line's figures (tests, docs); empty when it is missing."""
    m = SUMMARY.search(text)
    return {"images": int(m[1]), "speedup": float(m[2]), "share": float(m[3])} if m else {}
