"""`tagsift bench service` in small: a real subprocess that starts its own API and worker processes.

40 CIFAR-10 photos, 1 epoch on the tiny random-init backbone, a few /predict requests; checks the figures are
printed and the summary line parses with positive values (no speed assertions). Embedded SQLite by default, and
PostgreSQL + Redis through --database-url / --broker-url.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench.service import percentile
from tests.ml.reference_fixtures import cifar10_path  # noqa: F401 - fixture
from tests.worker.conftest import TAGSIFT, tiny_backbone

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(
    r"^upload_images_per_s=(?P<upload>[\d.]+) predict_api_rps=(?P<api>[\d.]+) predict_raw_rps=(?P<raw>[\d.]+)"
    r" predict_ratio=(?P<ratio>[\d.]+)% p50_ms=(?P<p50>[\d.]+) p99_ms=(?P<p99>[\d.]+)"
    r" train_overhead=(?P<overhead>-?[\d.]+)%$",
    re.MULTILINE,
)


def _bench(tmp_path: Path, cifar: Path, *extra: str) -> str:
    proc = subprocess.run(
        [str(TAGSIFT), "bench", "service", "--images", "40", "--upload-batch", "20", "--epochs", "1",
         "--clients", "2", "--requests", "5", "--rounds", "2", "--train-rounds", "2",
         "--backbone", tiny_backbone(tmp_path),
         "--cache-dir", str(tmp_path / "models"), "--cifar10-path", str(cifar), *extra],
        capture_output=True, text=True, timeout=170, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _check(out: str) -> None:
    match = SUMMARY.search(out)
    assert match, out
    values = {k: float(v) for k, v in match.groupdict().items()}
    assert all(values[k] > 0 for k in ("upload", "api", "raw", "ratio", "p50", "p99")), values
    assert values["p99"] >= values["p50"]
    assert "upload: 40 images in 2 requests" in out
    for rnd in (1, 2):  # --train-rounds 2: a direct run, then a job, twice
        assert f"train round {rnd}/2: ml/ direct (this process)" in out
        assert f"train round {rnd}/2: service POST -> succeeded" in out
    assert "train: fastest job" in out and "train overhead:" in out
    assert "predict (API): 10 requests of 1 image from 2 clients per round, median of 2 rounds" in out
    assert out.count("predict round ") == 2 and "CPU ms per request in the API" in out


def test_bench_service_embedded(tmp_path, cifar10_path):  # noqa: F811
    out = _bench(tmp_path, cifar10_path)
    _check(out)
    assert "embedded SQLite" in out


@pytest.mark.slow
def test_bench_service_postgres_redis(tmp_path, cifar10_path, postgres_url, redis_url):  # noqa: F811
    out = _bench(tmp_path, cifar10_path, "--database-url", postgres_url, "--broker-url", redis_url)
    _check(out)
    assert "PostgreSQL + Redis" in out


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
