"""The worker's main process stays light: importing the Celery app and tasks loads no torch and touches no CUDA."""

from __future__ import annotations

import subprocess
import sys

from tests.worker.conftest import ROOT


def test_worker_parent_imports_no_torch():
    code = (
        "import sys, worker.celery_app, worker.tasks, worker.leases, worker.training, worker.runtime\n"
        "assert worker.celery_app.celery_app.tasks['tagsift.train'].acks_late\n"
        "assert worker.celery_app.celery_app.tasks['tagsift.train'].reject_on_worker_lost\n"
        "bad = [m for m in ('torch', 'open_clip', 'ml.train') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
