"""The writes of one claimed run: progress and its end, each fenced on the run's lease (a stale runner cannot write)
and retried through a database outage for up to the lease (``worker.leases.retry_db``). The fence and the status
change are ``app.services.job_states``'s (the one owner of a job's status)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from app.db import session_scope
from app.dbclock import db_now
from app.services import job_states
from app.services.job_states import Event, add_event
from vocab import JobStatus
from worker.leases import Heartbeat, retry_db

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

    def fenced_update(self, session, **values) -> None:
        """Write ``values`` on the job's row while the lease is ours (``job_states.fenced_update``), else
        :class:`LeaseLost`."""
        if not job_states.fenced_update(session, self.job_id, runner=self.runner, **values):
            self._lost()

    def transition(self, session, to: JobStatus, *, events: Iterable[Event] = (), **values) -> None:
        """End the run's job in ``to`` (``job_states.transition`` from running, fenced on our lease, stamped on the
        database's clock), else :class:`LeaseLost`."""
        moved = job_states.transition(
            session,
            self.job_id,
            to,
            expected=JobStatus.RUNNING,
            fence=self.runner,
            now=db_now(),
            events=events,
            **values,
        )
        if not moved:
            self._lost()

    def _lost(self) -> None:
        self.heartbeat.lost = True
        raise LeaseLost(self.job_id)

    def transaction(self, what: str, fn):
        """``fn()`` (one whole transaction), retried while the database is unreachable (see the module docstring)."""
        return retry_db(fn, what=f"job {self.job_id}: {what}", patience=self.patience)

    def write(self, event: tuple[str, dict] | None = None, **progress) -> None:
        self.progress = {**self.progress, **progress}

        def write_once() -> None:
            with session_scope() as session:
                self.fenced_update(session, progress=dict(self.progress))
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
