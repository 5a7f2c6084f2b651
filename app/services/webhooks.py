"""Webhooks: an owner registers URLs for job and review events; each event becomes one outbox row per hook.

**Outbox.** :func:`emit` adds a :class:`~app.models.WebhookDelivery` per subscribed hook to the caller's session, so
the row commits with the state change it reports, or not at all: no event is lost when a process dies right after a
commit, and none is sent for a change that rolled back. The API never makes an outbound request; workers send the
rows (``worker.webhooks``), retry them with backoff and record every attempt, which ``GET
/webhooks/{id}/deliveries`` shows.

**What a receiver gets** (docs/integrations.md, "Webhooks"): ``POST`` of the JSON body ``{"id", "type",
"created_at", "webhook_id", "data"}`` with the headers ``Tagsift-Delivery`` (the body's ``id``, the same on every
retry: the idempotency key), ``Tagsift-Event``, ``Tagsift-Attempt``, ``Tagsift-Timestamp`` (Unix seconds of this
attempt) and ``Tagsift-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>" keyed with the hook's secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import secretbox
from app.config import Settings
from app.errors import FieldError, InvalidInput
from app.models import Job, Owner, Webhook, WebhookDelivery, new_id, utcnow
from app.schemas import (
    WebhookAttemptRead,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryList,
    WebhookDeliveryRead,
    WebhookList,
    WebhookRead,
)
from app.secretbox import seal, unseal
from app.services.job_views import job_read
from app.services.lookup import get_owned
from app.services.pages import keyset_page
from app.services.webhook_urls import UrlRefused, check_url

SIGNATURE_VERSION = "v1"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Tagsift-Signature`` value: ``v1=`` and the hex HMAC-SHA256 of ``b"<timestamp>." + body``.

    ``secret`` is the hook's secret as stored: sealed (``app.secretbox``, opened here) or legacy plain text."""
    mac = hmac.new(unseal(secret).encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


# --- the hooks ------------------------------------------------------------------------------------------------------


def webhook_read(hook: Webhook) -> WebhookRead:
    return WebhookRead(
        id=hook.id, url=hook.url, events=hook.events, description=hook.description, created_at=hook.created_at
    )


def create_webhook(*, session: Session, owner: Owner, hook_in: WebhookCreate, settings: Settings) -> WebhookCreated:
    """Register a hook; the URL is checked (form, allowed host, every resolved address) before anything is stored."""
    try:
        check_url(hook_in.url, settings)
    except UrlRefused as exc:
        raise InvalidInput(
            f"url: {exc}", errors=[FieldError(field="url", item=hook_in.url[:200], message=str(exc))]
        ) from None
    hook = Webhook(
        owner_id=owner.id,
        url=hook_in.url,
        events=list(dict.fromkeys(hook_in.events)),
        description=hook_in.description,
        secret=seal(secret := new_secret()),  # encrypted at rest with TAGSIFT_SECRET_KEYS' newest key
    )
    session.add(hook)
    session.commit()
    return WebhookCreated(**webhook_read(hook).model_dump(), secret=secret)


def get_webhook(*, session: Session, owner: Owner, webhook_id: str) -> Webhook:
    """The owner's hook; 404 for a missing id and for another owner's."""
    return get_owned(session, Webhook, webhook_id, owner=owner, what="webhook")


def read_webhook(*, session: Session, owner: Owner, webhook_id: str) -> WebhookRead:
    return webhook_read(get_webhook(session=session, owner=owner, webhook_id=webhook_id))


def list_webhooks(*, session: Session, owner: Owner, cursor: str | None, limit: int) -> WebhookList:
    """A page of the owner's hooks, oldest first (``app.services.pages``)."""
    page = keyset_page(
        session, select(Webhook).where(Webhook.owner_id == owner.id), Webhook, cursor=cursor, limit=limit
    )
    return WebhookList(data=[webhook_read(h) for h in page.rows], next_cursor=page.next_cursor, total=page.total)


def delete_webhook(*, session: Session, owner: Owner, webhook_id: str) -> None:
    """Delete the hook with its delivery log; its pending deliveries are never sent."""
    hook = get_webhook(session=session, owner=owner, webhook_id=webhook_id)
    session.delete(hook)
    session.commit()


# --- the delivery log -----------------------------------------------------------------------------------------------


def delivery_read(row: WebhookDelivery) -> WebhookDeliveryRead:
    return WebhookDeliveryRead(
        id=row.delivery_id,
        event=row.event,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=row.created_at,
        finished_at=row.finished_at,
        payload=json.loads(row.body),
        log=[WebhookAttemptRead(**entry) for entry in row.log or []],
    )


def list_deliveries(
    *, session: Session, owner: Owner, webhook_id: str, status: str | None, cursor: int | None, limit: int
) -> WebhookDeliveryList:
    """The hook's deliveries, newest first, optionally only those with ``status``; ``cursor``: those older than the
    delivery at that position (``next_cursor``, the last row's ``id``)."""
    hook = get_webhook(session=session, owner=owner, webhook_id=webhook_id)
    where = [WebhookDelivery.webhook_id == hook.id]
    if status is not None:
        where.append(WebhookDelivery.status == status)
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where)) or 0
    stmt = select(WebhookDelivery).where(*where)
    if cursor is not None:
        stmt = stmt.where(WebhookDelivery.id < cursor)
    rows = list(session.scalars(stmt.order_by(WebhookDelivery.id.desc()).limit(limit + 1)))
    next_cursor = str(rows[limit - 1].id) if len(rows) > limit else None
    return WebhookDeliveryList(data=[delivery_read(r) for r in rows[:limit]], total=total, next_cursor=next_cursor)


# --- emitting events ------------------------------------------------------------------------------------------------


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def emit(session: Session, *, owner_id: str, event: str, data: dict) -> int:
    """Add one delivery of ``event`` for each of the owner's hooks subscribed to it, in the caller's transaction
    (committed with the change it reports). Returns how many."""
    hooks = session.execute(select(Webhook.id, Webhook.events).where(Webhook.owner_id == owner_id)).all()
    now = utcnow()
    n = 0
    for hook_id, events in hooks:
        if event not in events:
            continue
        delivery_id = new_id()
        body = {"id": delivery_id, "type": event, "created_at": _iso(now), "webhook_id": hook_id, "data": data}
        session.add(
            WebhookDelivery(
                delivery_id=delivery_id,
                webhook_id=hook_id,
                event=event,
                body=json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str),
                status="pending",
                attempts=0,
                next_attempt_at=now,
                log=[],
                created_at=now,
            )
        )
        n += 1
    return n


def emit_job_event(session: Session, job_id: str, event: str) -> None:
    """:func:`emit` ``event`` (``job.queued``, ``job.started``, ...) with the job as it stands in this transaction."""
    session.flush()
    job = session.get(Job, job_id, populate_existing=True)
    if job is not None:
        emit(session, owner_id=job.owner_id, event=event, data={"job": job_read(job).model_dump(mode="json")})


def reseal_secrets(*, session: Session) -> tuple[int, int]:
    """Seal every hook's secret with the newest key of TAGSIFT_SECRET_KEYS (legacy plain text included); returns
    (sealed now, hooks in all). :class:`app.secretbox.SecretKeyError` when a secret opens with no configured key."""
    if not secretbox.keys():
        raise secretbox.SecretKeyError("TAGSIFT_SECRET_KEYS is not set: there is no key to encrypt with")
    hooks = list(session.scalars(select(Webhook).with_for_update()))
    changed = 0
    for hook in hooks:
        if secretbox.needs_reseal(hook.secret):
            hook.secret = secretbox.seal(secretbox.unseal(hook.secret))
            changed += 1
    session.commit()
    return changed, len(hooks)
