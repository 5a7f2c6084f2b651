"""The live queue's light process: ``tagsift live-worker`` consumes only ``TAGSIFT_LIVE_QUEUE`` (the refits, short
tasks) with one solo Celery worker, so that no training job, however long, stands in front of a refit.
``tagsift worker`` starts one beside its training pool (:func:`start_beside`) unless ``TAGSIFT_LIVE_WORKER`` is
false; a deployment may instead run ``tagsift live-worker`` on its own (docs/deploy.md, Live refits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def run() -> None:
    """Consume the live queue in this process (solo pool: one refit at a time, features kept in memory)."""
    from app.config import get_settings
    from worker import runtime
    from worker.celery_app import celery_app

    settings = get_settings()
    runtime.set_live_process()
    celery_app.worker_main(
        [
            "worker",
            "--loglevel",
            settings.log_level,
            "--queues",
            settings.live_queue,
            "--concurrency",
            "1",
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--hostname",
            f"live@{os.uname().nodename}.{os.getpid()}",
        ]
    )


def start_beside() -> subprocess.Popen:
    """``tagsift live-worker`` as a child of this worker: it dies with it (Linux: the parent-death signal)."""
    exe = Path(sys.argv[0]).with_name("tagsift")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "worker.cli"]
    return subprocess.Popen([*cmd, "live-worker"], env=os.environ.copy(), preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
