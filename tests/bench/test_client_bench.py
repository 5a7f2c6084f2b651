"""`tagsift bench client` in small: a real subprocess that writes CIFAR-10 JPEGs to a folder and uploads them with
the client and with the raw-HTTP path, each into a service of its own; the last line has the exact format, with
the ratio of the two rates it printed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.ml.reference_fixtures import cifar10_path  # noqa: F401 - fixture
from tests.worker.conftest import TAGSIFT

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^client upload images=40 client_ips=(?P<c>[\d.]+) raw_ips=(?P<r>[\d.]+) ratio=(?P<ratio>[\d.]+)$")


def test_bench_client(cifar10_path: Path) -> None:  # noqa: F811
    proc = subprocess.run(
        [str(TAGSIFT), "bench", "client", "--images", "40", "--batch", "15", "--cifar10-path", str(cifar10_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert re.search(r"^  round 1 raw: [\d.]+ s, \d+ images/s$", out, re.MULTILINE), out
    assert re.search(r"^  round 1 client: [\d.]+ s, \d+ images/s$", out, re.MULTILINE), out
    match = LINE.match(out.strip().splitlines()[-1])
    assert match, out
    client, raw, ratio = (float(match[k]) for k in ("c", "r", "ratio"))
    assert client > 0 and raw > 0 and ratio == pytest.approx(client / raw, rel=0.01)  # of the rounded rates
