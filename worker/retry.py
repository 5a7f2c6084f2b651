"""Retrying a call while a service the worker depends on (the database, the object store) does not answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def first_line(exc: BaseException) -> str:
    """The error's first line (at most 300 characters), for a log line."""
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def with_backoff(
    fn: Callable[[], T],
    *,
    what: str,
    resource: str,
    patience: float,
    first_delay: float,
    transient: Callable[[Exception], bool],
    give_up: Callable[[int, Exception], Exception],
) -> T:
    """``fn()``, retried while it raises a ``transient`` error, with backoff (``first_delay`` doubling up to 5 s).

    The last try is made at the deadline (``patience`` seconds after the first); if that fails too,
    ``give_up(failures, error)`` is raised from the error. Any other error is raised at once. ``what`` names the
    caller's step and ``resource`` the service in the two log lines (the first failure, the recovery).
    """
    deadline = time.monotonic() + patience
    delay, failures = first_delay, 0
    while True:
        try:
            result = fn()
        except Exception as exc:
            if not transient(exc):
                raise
            failures += 1
            if time.monotonic() >= deadline:
                raise give_up(failures, exc) from exc
            if failures == 1:
                log.warning(
                    "%s: %s unavailable, retrying for up to %.0f s: %s", what, resource, patience, first_line(exc)
                )
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
            delay = min(delay * 2, 5.0)
        else:
            if failures:
                log.warning("%s: %s back after %d failed tries", what, resource, failures)
            return result
