"""Sending webhook deliveries: the outbox rows that ``app.services.webhooks.emit`` committed with each state change.

Each worker's main process runs a :class:`Dispatcher` thread (started on ``worker_ready`` in ``worker.celery_app``,
beside the reaper). Every ``TAGSIFT_WEBHOOK_POLL_SECONDS`` it:

1. **takes** due rows (``pending``, ``next_attempt_at`` passed) with one conditional ``UPDATE`` each, which counts
   the attempt and moves ``next_attempt_at`` past the attempt's timeout: any number of workers agree on who sends
   what, and a worker that dies mid-attempt leaves the row due again a little later (delivery is at least once;
   receivers deduplicate by the delivery id);
2. **sends** each (a few at a time): the URL is checked again (allowed host, every resolved address public or
   allowed) and the request goes to one of the addresses checked there, never to a second resolution of the name
   (DNS rebinding), with TLS verified against the host name. Redirects are not followed;
3. **records** the attempt (status code, error, duration) in the row's log: a 2xx ends it ``succeeded``; anything else
   is retried after ``TAGSIFT_WEBHOOK_RETRY_SECONDS`` doubled per failure (at most 1 h) until
   ``TAGSIFT_WEBHOOK_MAX_ATTEMPTS``, then ``failed``. The write is fenced on the attempt number.

Once an hour it also deletes finished deliveries older than ``TAGSIFT_WEBHOOK_LOG_DAYS`` (:func:`prune`).
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update

from app.config import Settings
from app.db import session_scope
from app.models import Webhook, WebhookDelivery
from app.secretbox import SecretKeyError
from app.services.webhook_urls import Target, UrlRefused, check_url
from app.services.webhooks import sign
from worker.leases import is_transient_db_error, retry_db, utcnow
from worker.loops import AGAIN, Loop

log = logging.getLogger(__name__)

#: Deliveries taken per pass, and sent at once.
BATCH = 16
THREADS = 4
#: Longest wait between two attempts.
MAX_RETRY_DELAY = 3600.0
#: How often each worker deletes the deliveries older than TAGSIFT_WEBHOOK_LOG_DAYS.
PRUNE_EVERY_SECONDS = 3600.0
#: Bytes of a response body kept for the log.
EXCERPT_BYTES = 512
USER_AGENT = "tagsift-webhooks/1"

#: A row's log entry for an attempt whose worker stopped before recording it.
LOST_ATTEMPT = "no result recorded: the worker stopped during this attempt"


@dataclass
class Due:
    row_id: int
    delivery_id: str
    event: str
    url: str
    secret: str
    body: bytes
    attempt: int  # this attempt's number, from 1
    log: list[dict]


@dataclass
class Outcome:
    started: datetime
    duration_ms: int
    status_code: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def retry_delay(settings: Settings, failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed attempt."""
    return min(settings.webhook_retry_seconds * 2 ** (failures - 1), MAX_RETRY_DELAY)


def _hold_seconds(settings: Settings) -> float:
    """How long a taken row stays ours: longer than one attempt can last (connect + read timeouts, per address)."""
    return 4 * settings.webhook_timeout_seconds + 30


# --- take -----------------------------------------------------------------------------------------------------------


def claim_due(settings: Settings, *, limit: int = BATCH, now: datetime | None = None) -> list[Due]:
    """Take up to ``limit`` due deliveries (see the module docstring)."""
    now = now or utcnow()
    hold = now + timedelta(seconds=_hold_seconds(settings))
    wd = WebhookDelivery
    out: list[Due] = []
    with session_scope() as session:
        rows = session.execute(
            select(wd.id, wd.attempts)
            .where(wd.status == "pending", wd.next_attempt_at <= now)
            .order_by(wd.next_attempt_at, wd.id)
            .limit(limit)
        ).all()
        for row_id, attempts in rows:
            taken = (
                update(wd)
                .where(wd.id == row_id, wd.status == "pending", wd.attempts == attempts, wd.next_attempt_at <= now)
                .execution_options(synchronize_session=False)
            )
            if attempts >= settings.webhook_max_attempts:  # its last attempt's worker died: nothing left to try
                session.execute(
                    taken.values(
                        status="failed",
                        finished_at=now,
                        next_attempt_at=None,
                        last_error=LOST_ATTEMPT,
                        last_status_code=None,
                    )
                )
                continue
            if session.execute(taken.values(attempts=attempts + 1, next_attempt_at=hold)).rowcount != 1:
                continue  # another worker took it
            row = session.execute(
                select(wd.delivery_id, wd.event, wd.body, wd.log, Webhook.url, Webhook.secret)
                .join(Webhook, Webhook.id == wd.webhook_id)
                .where(wd.id == row_id)
            ).one_or_none()
            if row is None:  # its hook was deleted a moment ago (the delivery went with it)
                continue
            out.append(
                Due(
                    row_id=row_id,
                    delivery_id=row.delivery_id,
                    event=row.event,
                    url=row.url,
                    secret=row.secret,
                    body=row.body.encode(),
                    attempt=attempts + 1,
                    log=list(row.log or []),
                )
            )
    return out


# --- send -----------------------------------------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to one checked address; the Host header still names the URL's host."""

    def __init__(self, target: Target, address: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to one checked address, the certificate verified against the URL's host name (SNI too)."""

    def __init__(self, target: Target, address: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def headers_for(due: Due, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Tagsift-Event": due.event,
        "Tagsift-Delivery": due.delivery_id,
        "Tagsift-Attempt": str(due.attempt),
        "Tagsift-Timestamp": str(timestamp),
        "Tagsift-Signature": sign(due.secret, timestamp, due.body),
    }


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return " ".join(text.split())[:200]


def send(due: Due, settings: Settings) -> Outcome:
    """One attempt: check the URL again, POST the signed body, classify the answer."""
    started_at, t0 = utcnow(), time.monotonic()

    def outcome(status_code: int | None, error: str | None) -> Outcome:
        return Outcome(started_at, int((time.monotonic() - t0) * 1000), status_code, error)

    try:
        target = check_url(due.url, settings)
    except UrlRefused as exc:
        return outcome(None, f"refused: {exc}")
    try:
        headers = headers_for(due, int(time.time()))
    except SecretKeyError as exc:  # sealed with a key no longer in TAGSIFT_SECRET_KEYS: an attempt that failed, logged
        return outcome(None, f"cannot sign: {exc}")
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    failures: list[str] = []
    for address in target.addresses:
        conn = cls(target, address, settings.webhook_timeout_seconds)
        try:
            try:
                conn.connect()
            except OSError as exc:  # refused, unreachable, timed out, TLS: try the host's next address
                failures.append(f"{address}: {type(exc).__name__}: {exc}")
                continue
            try:
                conn.request("POST", target.path, body=due.body, headers=headers)
                response = conn.getresponse()
                excerpt = _excerpt(response.read(EXCERPT_BYTES))
            except (OSError, http.client.HTTPException) as exc:
                return outcome(None, f"{type(exc).__name__}: {exc}"[:500])
        finally:
            conn.close()
        status = response.status
        if 200 <= status < 300:
            return outcome(status, None)
        if 300 <= status < 400:
            where = response.getheader("Location") or "?"
            return outcome(status, f"HTTP {status}: redirects are not followed (Location: {where[:200]})")
        return outcome(status, f"HTTP {status}" + (f": {excerpt}" if excerpt else ""))
    return outcome(None, f"could not connect to {target.host}: " + "; ".join(failures)[:500])


# --- record ---------------------------------------------------------------------------------------------------------


def record(due: Due, result: Outcome, settings: Settings) -> str:
    """Write the attempt into the row (fenced on its attempt number); returns the row's status after it."""
    entries = list(due.log)
    while len(entries) < due.attempt - 1:  # attempts whose worker stopped before recording them
        n = len(entries) + 1
        entries.append({"attempt": n, "at": None, "status_code": None, "error": LOST_ATTEMPT, "duration_ms": 0})
    entries.append(
        {
            "attempt": due.attempt,
            "at": result.started.isoformat(),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": result.duration_ms,
        }
    )
    now = utcnow()
    values: dict = {"log": entries, "last_status_code": result.status_code, "last_error": result.error}
    if result.ok:
        status = "succeeded"
        values.update(status=status, finished_at=now, next_attempt_at=None)
    elif due.attempt >= settings.webhook_max_attempts:
        status = "failed"
        values.update(status=status, finished_at=now, next_attempt_at=None)
    else:
        status = "pending"
        values.update(next_attempt_at=now + timedelta(seconds=retry_delay(settings, due.attempt)))
    wd = WebhookDelivery
    with session_scope() as session:
        res = session.execute(
            update(wd)
            .where(wd.id == due.row_id, wd.status == "pending", wd.attempts == due.attempt)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    if res.rowcount != 1:  # deleted with its hook, or taken over after we overran the hold
        return "gone"
    return status


def deliver(due: Due, settings: Settings) -> str:
    result = send(due, settings)
    status = retry_db(
        lambda: record(due, result, settings),
        what=f"webhook delivery {due.delivery_id}",
        patience=_hold_seconds(settings),
    )
    log.info(
        "webhook delivery %s (%s) attempt %d: %s%s",
        due.delivery_id,
        due.event,
        due.attempt,
        status,
        f" ({result.error})" if result.error else f" (HTTP {result.status_code})",
    )
    return status


# --- retention ------------------------------------------------------------------------------------------------------


def prune(settings: Settings, *, now: datetime | None = None) -> int:
    """Delete finished deliveries older than ``TAGSIFT_WEBHOOK_LOG_DAYS`` (none when it is 0); returns how many."""
    if settings.webhook_log_days <= 0:
        return 0
    before = (now or utcnow()) - timedelta(days=settings.webhook_log_days)
    wd = WebhookDelivery
    with session_scope() as session:
        res = session.execute(
            delete(wd)
            .where(wd.status.in_(("succeeded", "failed")), wd.finished_at < before)
            .execution_options(synchronize_session=False)
        )
    return res.rowcount


# --- the thread -----------------------------------------------------------------------------------------------------


class Dispatcher(Loop):
    """Takes, sends and records due deliveries every ``settings.webhook_poll_seconds`` on a daemon thread (at once
    again while a pass took a whole batch)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="tagsift-webhook")
        self._next_prune = time.monotonic()
        super().__init__("tagsift-webhooks", interval=settings.webhook_poll_seconds)

    def tick(self) -> int:
        """One pass: take what is due and send it; returns how many were taken."""
        due = claim_due(self.settings)
        if due:
            list(self._pool.map(lambda d: deliver(d, self.settings), due))
        return len(due)

    def step(self) -> str | None:
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            if pruned := prune(self.settings):
                log.info(
                    "webhook log: %d finished deliveries older than %s days deleted",
                    pruned,
                    self.settings.webhook_log_days,
                )
        return AGAIN if self.tick() >= BATCH else None

    def on_error(self, exc: Exception) -> None:
        if is_transient_db_error(exc):
            log.warning("webhook pass skipped, database unavailable: %s", str(exc).splitlines()[0][:300])
        else:
            log.exception("webhook pass failed", exc_info=exc)

    def finished(self) -> None:
        self._pool.shutdown(wait=False)
