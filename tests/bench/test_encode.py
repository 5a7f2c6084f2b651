"""`tagsift bench encode` in small: a real subprocess that starts its own API and two workers on PostgreSQL + Redis,
with generated images and the tiny random-init backbone; every figure is printed and positive. (Which worker encodes
which shard is the worker tests' business: tests/worker/test_shards.py; with the tiny model one worker may finish
every shard before the other is asked.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.encode import parse_summary
from tests.worker.conftest import TAGSIFT, tiny_backbone

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_bench_encode_tiny(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    tagsift = [str(TAGSIFT)] if TAGSIFT.exists() else [sys.executable, "-m", "worker.cli"]
    proc = subprocess.run(
        [*tagsift, "bench", "encode", "--images", "48", "--shard-images", "16", "--raw-images", "16",
         "--generated", "--backbone", tiny_backbone(tmp_path), "--database-url", postgres_url,
         "--broker-url", redis_url],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "PostgreSQL + Redis" in out and "1 torch thread(s) per worker, shards of 16 images" in out, out
    one = re.search(r"^one worker:  encoding ([\d.]+) s, ([\d.]+) images/s \(3 shards: 3\)$", out, re.MULTILINE)
    two = re.search(r"^two workers: encoding ([\d.]+) s, ([\d.]+) images/s \(3 shards: [\d +]+\)$", out, re.M)
    assert one and two, out
    assert float(one[1]) > 0 and float(two[1]) > 0
    raw = re.search(r"^raw backbone: ([\d.]+) images/s on 16 pre-decoded tensors", out, re.MULTILINE)
    assert raw and float(raw[1]) > 0, out
    assert re.search(r"^encode_images in this process: [\d.]+ images/s decoding between model calls, [\d.]+ images/s"
                     r" with 2 decode threads$", out, re.MULTILINE), out  # fmt: skip
    summary = parse_summary(out)
    assert summary["images"] == 48 and summary["speedup"] > 0 and summary["share"] > 0, out
    assert out.rstrip().splitlines()[-1].startswith("encode images=48 two_workers_speedup="), out
