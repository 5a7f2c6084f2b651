"""The one owner-scoped lookup of the services: a row by id, 404 for a missing id and for another owner's alike
(ids are not disclosed), and 404 without a query for an id that cannot be one (see ``app.checks``)."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.checks import plausible_id, shorten
from app.errors import NotFound
from app.models import Dataset, Owner

T = TypeVar("T")


def get_owned(session: Session, model: type[T], ident: str, *, owner: Owner, what: str, lock: bool = False) -> T:
    """The ``model`` row ``ident`` of ``owner``: its own ``owner_id``, or its dataset's for rows that have none."""
    if not plausible_id(ident):
        raise NotFound(f"{what} {shorten(ident)!r} not found")
    stmt = select(model).where(model.id == ident)
    if hasattr(model, "owner_id"):
        stmt = stmt.where(model.owner_id == owner.id)
    else:  # items: owned through their dataset
        stmt = stmt.join(Dataset, Dataset.id == model.dataset_id).where(Dataset.owner_id == owner.id)
    if lock:
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None:
        raise NotFound(f"{what} {ident} not found")
    return row
