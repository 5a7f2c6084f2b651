"""API keys: created by the CLI, stored as SHA-256 hashes, resolved to an owner per request."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey, Owner

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
