"""`tagsift up` (README's first command after the install): API + one worker process, and a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

BIN = Path(sys.executable).with_name("tagsift")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_up_serves_healthz_and_takes_its_worker_down(tmp_path: Path, stop: signal.Signals) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGSIFT_")}
    env.update({"TAGSIFT_DATA_DIR": str(tmp_path / "var"), "TAGSIFT_PORT": str(port)})
    proc = subprocess.Popen([str(BIN), "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        status = None
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, "tagsift up exited early"
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.5)
        assert status == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text  # SQLite + the embedded SQLite broker
        workers = _children(proc.pid)
        assert len(workers) == 1, f"expected one worker process, found {workers}"
        assert (tmp_path / "var" / "tagsift.db").exists()
        proc.send_signal(stop)
        proc.wait(timeout=60)
        assert _wait_gone(workers, 60) == [], "the worker outlived `tagsift up`"
    finally:
        if proc.poll() is None:
            proc.kill()
