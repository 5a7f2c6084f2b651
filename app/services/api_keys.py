"""API keys: created by the CLI, stored as SHA-256 hashes, resolved to an owner per request."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey, Owner, utcnow

KEY_PREFIX = "tsk_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(*, session: Session, owner_name: str, name: str | None = None) -> str:
    """Create (or reuse) the owner ``owner_name`` and a new key for it; returns the plaintext key once.

    ``name`` says who holds the key (a person or a service): reviews made with it are recorded under that name."""
    owner_name = owner_name.strip()
    if not owner_name:
        raise ValueError("owner: the owner name is empty")
    name = (name or "").strip() or None
    if name is not None and len(name) > 200:
        raise ValueError("name: longer than 200 characters")
    owner = session.scalar(select(Owner).where(Owner.name == owner_name))
    if owner is None:
        owner = Owner(name=owner_name)
        session.add(owner)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner_id=owner.id, prefix=key[:12], name=name, key_hash=hash_key(key)))
    session.flush()
    return key


def key_for_secret(*, session: Session, key: str) -> ApiKey | None:
    """The unrevoked key row for the plaintext ``key`` (with its owner loaded), or None."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def reviewer_name(api_key: ApiKey) -> str:
    """How reviews made with ``api_key`` are signed: its name, or its prefix when it has none."""
    return api_key.name or f"key {api_key.prefix}"


def list_api_keys(*, session: Session, owner_name: str | None = None) -> list[ApiKey]:
    """Every key (revoked ones too), oldest first, with its owner; only ``owner_name``'s when given."""
    query = select(ApiKey).join(Owner).order_by(ApiKey.created_at, ApiKey.id)
    if owner_name is not None:
        query = query.where(Owner.name == owner_name.strip())
    return list(session.scalars(query))


def revoke_api_key(*, session: Session, ident: str) -> ApiKey:
    """Revoke the key named by ``ident``: its id, its prefix (as ``list-api-keys`` shows it) or the key itself.

    ``LookupError`` when nothing or several keys match, ``ValueError`` when it is already revoked. The key stops
    working at once in new processes; a running API process that resolved it recently keeps accepting it for up to
    ``TAGSIFT_LOOKUP_CACHE_SECONDS`` (its own cache: the CLI cannot clear another process's memory)."""
    ident = ident.strip()
    if not ident:
        raise LookupError("no key named: give its id, its prefix or the key")
    if ident.startswith(KEY_PREFIX) and len(ident) > 16:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(ident))))
    else:
        rows = list(session.scalars(select(ApiKey).where((ApiKey.id == ident) | (ApiKey.prefix == ident))))
    if not rows:
        raise LookupError(f"no API key with the id or prefix {ident[:16]!r}")
    if len(rows) > 1:
        raise LookupError(f"{len(rows)} keys have the prefix {ident!r}: give the key's id (tagsift list-api-keys)")
    key = rows[0]
    if key.revoked_at is not None:
        raise ValueError(
            f"key {key.prefix} (id {key.id}) was already revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    key.revoked_at = utcnow()
    session.flush()
    return key
