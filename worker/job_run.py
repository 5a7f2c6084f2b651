"""The progress writes of one claimed run: each fenced on the run's lease (a stale runner cannot write) and retried
through a database outage for up to the lease (``worker.leases.retry_db``)."""

from __future__ import annotations

import logging
import time

from sqlalchemy import update

from app.db import session_scope
from app.models import Job
from worker.leases import Heartbeat, add_event, retry_db

log = logging.getLogger("worker.training")

#: (start, end) of each stage on the job's 0..1 progress bar.
STAGES: dict[str, tuple[float, float]] = {
    "loading_backbone": (0.0, 0.05),
    "encoding": (0.05, 0.35),
    "training": (0.35, 0.9),
    "labelling": (0.9, 0.95),
    "exporting": (0.95, 1.0),
}


class LeaseLost(Exception):
    """Another runner owns the job now (we stalled past our lease); stop without writing."""


class JobRun:
    """Progress writes of one claimed run, each fenced on our lease (a stale runner cannot write) and retried through
    a database outage for up to ``patience`` seconds (the lease)."""

    def __init__(self, job_id: str, runner: str, heartbeat: Heartbeat, patience: float = 0.0) -> None:
        self.job_id = job_id
        self.runner = runner
        self.heartbeat = heartbeat
        self.patience = patience
        self.progress: dict = {"stage": "claimed", "epoch": 0, "epochs": 0, "fraction": 0.0}
        self._last_write = 0.0

    def _fenced_update(self, session, **values) -> None:
        res = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.lease_owner == self.runner, Job.status == "running")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            self.heartbeat.lost = True
            raise LeaseLost(self.job_id)

    def transaction(self, what: str, fn):
        """``fn()`` (one whole transaction), retried while the database is unreachable (see the module docstring)."""
        return retry_db(fn, what=f"job {self.job_id}: {what}", patience=self.patience)

    def write(self, event: tuple[str, dict] | None = None, **progress) -> None:
        self.progress = {**self.progress, **progress}

        def write_once() -> None:
            with session_scope() as session:
                self._fenced_update(session, progress=dict(self.progress))
                if event is not None:
                    add_event(session, self.job_id, event[0], **event[1])

        self.transaction(event[0] if event else "progress", write_once)
        self._last_write = time.monotonic()

    def stage(self, name: str, **data) -> None:
        log.info("job %s: %s", self.job_id, name)
        self.write(("stage", {"stage": name, **data}), stage=name, fraction=STAGES[name][0])

    def within(self, stage: str, done: float, *, throttle: float = 1.0) -> None:
        """Progress inside ``stage`` (0..1), written at most every ``throttle`` seconds (and at the end)."""
        if done < 1.0 and time.monotonic() - self._last_write < throttle:
            return
        lo, hi = STAGES[stage]
        fraction = round(lo + (hi - lo) * min(max(done, 0.0), 1.0), 4)
        if self.progress.get("stage") == stage:  # never move the bar back within a stage
            fraction = max(fraction, float(self.progress.get("fraction") or 0.0))
        self.write(fraction=fraction)
