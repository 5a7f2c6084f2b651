"""Request dependencies as ``Annotated`` aliases: ``SessionDep``, ``SettingsDep``, ``StorageDep``, ``OwnerDep``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.errors import Unauthorized
from app.config import Settings, get_settings
from app.db import get_sessionmaker
from app.models import Owner
from app.services.api_keys import owner_for_key
from app.storage import BlobStore, get_storage


def get_session() -> Iterator[Session]:
    """One session per request; services commit, anything left uncommitted is rolled back."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[BlobStore, Depends(get_storage)]

_bearer = HTTPBearer(auto_error=False, description="An API key from `tagsift create-api-key --owner NAME`.")


def get_owner(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Owner:
    """The owner of the request's ``Authorization: Bearer <key>``; 401 problem+json otherwise."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    owner = owner_for_key(session=session, key=credentials.credentials)
    if owner is None:
        raise Unauthorized("invalid or revoked API key")
    return owner


OwnerDep = Annotated[Owner, Depends(get_owner)]
