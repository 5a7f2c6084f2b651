"""Request dependencies as ``Annotated`` aliases: ``SessionDep``, ``SettingsDep``, ``StorageDep``, ``OwnerDep``.

Only the session and a key lookup that misses the cache touch the database; the others are ``async`` so that
FastAPI does not hand them to its thread pool (a thread hop per dependency costs more than the work).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.errors import ApiError, Unauthorized
from app.models import Owner
from app.services.api_keys import hash_key, key_for_secret, reviewer_name
from app.services.reviews import Reviewer
from app.storage import BlobStore, get_storage
from app.ttl_cache import TTLCache


def get_session() -> Iterator[Session]:
    """One session per request; services commit, anything left uncommitted is rolled back."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


async def settings_dependency() -> Settings:
    return get_settings()


async def storage_dependency() -> BlobStore:
    return get_storage()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_dependency)]
StorageDep = Annotated[BlobStore, Depends(storage_dependency)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `tagsift create-api-key --owner NAME`.")


#: key hash -> (owner id, owner name, key id, reviewer name). Only keys that resolved are remembered (an unknown key
#: is looked up every time); owners come out as new transient :class:`Owner` objects (services use ``owner.id`` only).
owner_cache: TTLCache[tuple[str, str, str, str]] = TTLCache()


def _lookup_key(key: str) -> tuple[str, str, str, str] | None:
    session = get_sessionmaker()()
    try:
        row = key_for_secret(session=session, key=key)
        if row is None:
            return None
        return row.owner.id, row.owner.name, row.id, reviewer_name(row)
    finally:
        session.close()


async def get_owner(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Owner:
    """The owner of the request's ``Authorization: Bearer <key>``; 401 problem+json otherwise.

    The key's id and name are kept on ``request.state`` (see :func:`get_reviewer`). Remembered per process for
    ``TAGSIFT_LOOKUP_CACHE_SECONDS``; a cache miss looks the key up in the thread pool."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    return await owner_for(credentials.credentials, settings, request)


async def owner_for(key: str, settings: Settings, request: Request) -> Owner:
    """The owner of an API key (cached, see :func:`get_owner`); 401 for an unknown or revoked key. The key's id and
    name go on ``request.state.reviewer``."""
    key_hash = hash_key(key)
    found = owner_cache.get(key_hash)
    if found is None:
        found = await run_in_threadpool(_lookup_key, key)
        if found is None:
            raise Unauthorized("invalid or revoked API key")
        owner_cache.put(key_hash, found, settings.lookup_cache_seconds)
    request.state.reviewer = Reviewer(api_key_id=found[2], name=found[3])
    return Owner(id=found[0], name=found[1])


OwnerDep = Annotated[Owner, Depends(get_owner)]


async def get_owner_basic_or_bearer(request: Request, settings: SettingsDep) -> Owner:
    """The owner of ``Authorization: Basic`` (the API key as the password; what Label Studio sends to an ML
    backend registered with Basic auth) or ``Authorization: Bearer <key>``; 401 otherwise."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    key = ""
    if scheme.lower() == "bearer":
        key = value.strip()
    elif scheme.lower() == "basic":
        try:
            key = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            key = ""
    challenge = {"WWW-Authenticate": 'Basic realm="tagsift", Bearer'}
    if not key:
        raise ApiError(
            "missing API key: send HTTP Basic auth with the API key as the password, or 'Authorization: Bearer <key>'",
            status=401,
            code="unauthorized",
            headers=challenge,
        )
    try:
        return await owner_for(key, settings, request)
    except Unauthorized as exc:
        exc.headers = challenge
        raise


BasicOrBearerOwnerDep = Annotated[Owner, Depends(get_owner_basic_or_bearer)]


async def get_reviewer(request: Request, owner: OwnerDep) -> Reviewer:
    """Who makes the request's decisions (the API key's name), for the review history."""
    return request.state.reviewer


ReviewerDep = Annotated[Reviewer, Depends(get_reviewer)]
