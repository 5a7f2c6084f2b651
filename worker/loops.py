"""The one shape of the worker's background threads: a daemon thread that calls a step every few seconds until it is
stopped. The job's heartbeat and the reaper (``worker.leases``), a shard's lease (``worker.shards``), the webhook
sender (``worker.webhooks``) and the health file (``worker.health``) are each a :class:`Loop` with its own
:meth:`Loop.step`."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

#: What a step may return besides None (wait ``interval``, then step again).
AGAIN = "again"  # step again at once (more work is waiting)
DONE = "done"  # end the thread


class Loop:
    """Calls :meth:`step` on a daemon thread named ``name``, ``interval`` seconds apart, until :meth:`stop`.

    The first step runs at once, or after one interval with ``wait_first``. A step returns None (wait), :data:`AGAIN`
    or :data:`DONE`. An exception a step lets out goes to :meth:`on_error` (which logs it) and the loop goes on: a
    background thread must outlive a bad pass. :meth:`finished` runs on the thread as it ends. As a context manager
    the loop starts on entry and is stopped and joined on exit.
    """

    def __init__(self, name: str, *, interval: float, wait_first: bool = False) -> None:
        self.interval = interval
        self.wait_first = wait_first
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def step(self) -> str | None:
        raise NotImplementedError

    def on_error(self, exc: Exception) -> None:
        log.exception("%s: pass failed", self._thread.name, exc_info=exc)

    def finished(self) -> None:
        """Called on the loop's thread when it ends (release what the steps used)."""

    def start(self):
        self._thread.start()
        return self

    def stop(self, *, join: float | None = None) -> None:
        """Ask the loop to end (a step under way finishes first); wait up to ``join`` seconds for it when given."""
        self._stop.set()
        if join is not None and self._thread.is_alive():
            self._thread.join(timeout=join)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(join=30)

    def _run(self) -> None:
        try:
            if self.wait_first and self._stop.wait(self.interval):
                return
            while True:
                try:
                    after = self.step()
                except Exception as exc:
                    after = None
                    self.on_error(exc)
                if after == DONE or self._stop.is_set():
                    return
                if after != AGAIN and self._stop.wait(self.interval):
                    return
        finally:
            self.finished()
