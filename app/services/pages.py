"""Keyset pages of the owner-scoped lists (``GET /datasets``, ``/models``, ``/jobs``): oldest first, by
``(created_at, id)``, with an opaque cursor and a total.

The cursor is the last row's position, ``<created_at in microseconds since 1970 UTC>_<id>``: any such position
is a valid cursor (the API's schema states its pattern). The next page is the rows after that key,
which the ``(owner_id, created_at, id)`` indexes answer as a range scan (no OFFSET), so a page costs the same at
any depth and rows written meanwhile neither repeat nor go missing. ``total`` counts every row that matches the
filters (not only the rest after the cursor). Anything else is a 422 naming ``cursor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from app.checks import plausible_id
from app.errors import FieldError, InvalidInput


@dataclass
class Page:
    rows: list[Any]
    next_cursor: str | None
    total: int


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """``<created_at in microseconds since 1970 UTC>_<id>``: the row's position in ``(created_at, id)`` order."""
    return f"{(created_at.astimezone(UTC) - _EPOCH) // _MICROSECOND}_{row_id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor (its form is checked by the route's pattern); 422 naming ``cursor`` otherwise."""
    micros, sep, row_id = cursor.partition("_")
    try:
        if not (sep and micros.isdigit() and plausible_id(row_id)):
            raise ValueError(cursor)
        return _EPOCH + int(micros) * _MICROSECOND, row_id
    except (ValueError, OverflowError):
        raise InvalidInput(
            "cursor: not a position `<created_at µs>_<id>` of this listing",
            errors=[FieldError(field="cursor", message="cursor: not a `next_cursor` of this listing")],
        ) from None


def count_rows(session: Session, stmt: Select) -> int:
    """The ``total`` of a list: how many rows ``stmt`` (the list's ``select`` with its filters, before any cursor)
    matches, over every page."""
    return session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0


def keyset_page(session: Session, stmt: Select, model: Any, *, cursor: str | None, limit: int) -> Page:
    """One page of ``stmt`` (a ``select(model)`` with its filters) in ``(created_at, id)`` order."""
    total = count_rows(session, stmt)
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(model.created_at > created_at, and_(model.created_at == created_at, model.id > row_id)))
    rows = list(session.scalars(stmt.order_by(model.created_at, model.id).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return Page(rows=rows, next_cursor=next_cursor, total=total)
