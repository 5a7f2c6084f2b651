"""`tagsift bench load` in small: a real subprocess that starts its own API and worker on PostgreSQL + Redis.

8 clients for 8 s with the tiny random-init backbone: the command exits 0, reports zero errors, and every
operation of a client's loop (create dataset, upload, list items, read dataset and labels, start and poll a job)
ran and has its latency figures.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench.load import OPERATIONS
from tests.worker.conftest import TAGSIFT, tiny_backbone

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(
    r"^  (?P<op>\w+) +(?P<count>\d+) +(?P<errors>\d+)"
    r"  p50 +(?P<p50>[\d.]+)  p99 +(?P<p99>[\d.]+)  max +(?P<max>[\d.]+)$",
    re.MULTILINE,
)
SUMMARY = re.compile(
    r"^load: 8 clients, [\d.]+ s, (?P<requests>\d+) requests, (?P<rps>[\d.]+) requests/s, 0 errors;", re.MULTILINE
)


def test_bench_load_postgres_redis(tmp_path: Path, postgres_url: str, redis_url: str) -> None:
    proc = subprocess.run(
        [str(TAGSIFT), "bench", "load", "--clients", "8", "--duration", "8", "--job-every", "3",
         "--backbone", tiny_backbone(tmp_path), "--database-url", postgres_url, "--broker-url", redis_url],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert "8 clients x 8 s" in out and "PostgreSQL + Redis" in out, out
    rows = {m["op"]: m for m in ROW.finditer(out)}
    assert set(rows) == {*OPERATIONS, "overall"}, out
    for op, row in rows.items():
        assert int(row["count"]) > 0 and int(row["errors"]) == 0, (op, out)
        assert 0 < float(row["p50"]) <= float(row["p99"]) <= float(row["max"]), (op, out)
    assert int(rows["create_dataset"]["count"]) == 8
    summary = SUMMARY.search(out)
    assert summary and int(summary["requests"]) == int(rows["overall"]["count"]), out
    assert "error:" not in out
