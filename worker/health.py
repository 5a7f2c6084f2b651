"""The worker's health file: written by a thread of the worker's main process, read by ``tagsift worker-health``.

``celery inspect ping`` asks the worker over the broker and is answered by the thread that also runs jobs in a
``--pool solo`` worker (the GPU worker's pool), so it times out during every job and a healthy GPU worker looks dead.
Here a daemon thread rewrites ``TAGSIFT_WORKER_HEALTH_FILE`` every ``TAGSIFT_WORKER_HEALTH_SECONDS`` with the
worker's pid, kind and queues; a thread of its own keeps running while the main thread trains (torch releases the
GIL in its kernels, and Python switches threads every few ms otherwise), so the check answers during a job. The
Docker images' HEALTHCHECK runs ``tagsift worker-health``: healthy while the file is fresh and its process alive.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from worker.loops import Loop

log = logging.getLogger(__name__)


class HealthFile(Loop):
    """Rewrites ``path`` (atomically) every ``interval`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, path: Path, *, interval: float, info: dict) -> None:
        self.path = Path(path)
        self.info = info
        super().__init__("tagsift-health", interval=interval, wait_first=True)

    def start(self) -> HealthFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()
        return super().start()

    def write(self) -> None:
        body = {**self.info, "pid": os.getpid(), "time": time.time()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.path)

    def step(self) -> None:
        try:
            self.write()
        except OSError as exc:  # a full disk: the check turns unhealthy, which is what it is for
            log.warning("health file %s not written: %s", self.path, exc)


def check(path: Path, *, max_age: float) -> tuple[bool, str]:
    """(healthy, why): the file exists, is younger than ``max_age`` seconds and names a live process."""
    try:
        body = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return False, f"{path} does not exist (the worker has not started, or TAGSIFT_WORKER_HEALTH_FILE differs)"
    except (OSError, ValueError) as exc:
        return False, f"{path} is unreadable: {exc}"
    age = time.time() - float(body.get("time", 0))
    if age > max_age:
        return False, f"{path} is {age:.0f}s old (more than {max_age:.0f}s): the worker process is stuck or gone"
    pid = int(body.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"process {pid} that wrote {path} is gone"
    except PermissionError:
        pass  # alive, another user's
    return True, f"{body.get('kind', '?')} worker pid {pid} on {','.join(body.get('queues', []))}, {age:.1f}s ago"
