"""Browser sessions of the web app: signing in with an API key gives a random session token (kept in an HttpOnly
cookie; only its SHA-256 is stored) and a CSRF token; signing out deletes the row. A revoked key ends its sessions."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models import ApiKey, Owner, WebSession, utcnow
from app.services.api_keys import key_for_secret, reviewer_name
from app.services.reviews import Reviewer


@dataclass(frozen=True)
class SignedIn:
    """The signed-in user of a request: owner, reviewer (the key's name) and the session's CSRF token."""

    owner: Owner
    reviewer: Reviewer
    csrf_token: str
    session_id: str


def digest(token: str) -> str:
    """The stored form of a session token (its SHA-256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def sign_in(*, session: Session, api_key: str, hours: float) -> str | None:
    """A new session for a valid, unrevoked ``api_key``: the cookie token, or None for a wrong key."""
    key = key_for_secret(session=session, key=api_key.strip())
    if key is None:
        return None
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))  # expired sessions of anyone
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id=digest(token),
            api_key_id=key.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    session.commit()
    return token


def signed_in(*, session: Session, token: str | None) -> SignedIn | None:
    """The session of cookie ``token`` if it exists, has not expired and its key is not revoked."""
    if not token:
        return None
    row = session.execute(
        select(WebSession, ApiKey, Owner)
        .join(ApiKey, ApiKey.id == WebSession.api_key_id)
        .join(Owner, Owner.id == ApiKey.owner_id)
        .where(WebSession.id == digest(token), WebSession.expires_at > utcnow(), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    web, key, owner = row
    return SignedIn(
        owner=Owner(id=owner.id, name=owner.name),
        reviewer=Reviewer(api_key_id=key.id, name=reviewer_name(key)),
        csrf_token=web.csrf_token,
        session_id=web.id,
    )


def sign_out(*, session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(WebSession).where(WebSession.id == digest(token)))
        session.commit()


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
