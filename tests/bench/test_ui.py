"""`tagsift bench ui` in small: a real subprocess that starts its own API, uploads CIFAR-10 photos and drives
Chromium; it exits 0, shows every card, and stores one review row per key press (it checks that itself)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ml.reference_fixtures import cifar10_path  # noqa: F401 - pytest fixture
from tests.worker.conftest import TAGSIFT

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ui_command_measures_the_review_page(cifar10_path: Path) -> None:  # noqa: F811
    cmd = [str(TAGSIFT)] if TAGSIFT.exists() else [sys.executable, "-m", "worker.cli"]
    args = ["bench", "ui", "--items", "24", "--runs", "2", "--decisions", "5", "--cifar10-path", str(cifar10_path)]
    args += ["--map-items", "300", "--map-runs", "1"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(re.findall(r"^run \d: review page with 24 items ready in [\d.]+ s", proc.stdout, re.MULTILINE)) == 3
    assert "over 5 keys (5 rows stored)" in proc.stdout
    m = re.search(
        r"^ui review_ready_s=([\d.]+) map_ready_s=([\d.]+) lasso_s=([\d.]+) key_ms=([\d.]+)$", proc.stdout, re.M
    )
    assert m and all(float(x) > 0 for x in m.groups()), proc.stdout[-3000:]
