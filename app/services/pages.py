"""Keyset pages of the owner-scoped lists (``GET /datasets``, ``/models``, ``/jobs``): oldest first, by
``(created_at, id)``, with an opaque cursor and a total.

The cursor is base64url JSON of the last row's ``created_at`` and ``id``; the next page is the rows after that key,
which the ``(owner_id, created_at, id)`` indexes answer as a range scan (no OFFSET), so a page costs the same at
any depth and rows written meanwhile neither repeat nor go missing. ``total`` counts every row that matches the
filters (not only the rest after the cursor). A cursor that is not one of ours is a 422 naming ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from app.api.errors import FieldError, InvalidInput
from app.services.checks import plausible_id


@dataclass
class Page:
    rows: list[Any]
    next_cursor: str | None
    total: int


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps({"t": created_at.astimezone(UTC).isoformat(), "i": row_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor; :class:`InvalidInput` naming ``cursor`` for anything else."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        stamp, row_id = data["t"], data["i"]
        if not isinstance(stamp, str) or not isinstance(row_id, str) or not plausible_id(row_id):
            raise ValueError("cursor")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("no time zone")
        return created_at.astimezone(UTC), row_id
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidInput(
            "cursor: not a cursor from a previous page of this listing",
            errors=[FieldError(field="cursor", message="cursor: not a `next_cursor` of this listing")],
        ) from None


def keyset_page(session: Session, stmt: Select, model: Any, *, cursor: str | None, limit: int) -> Page:
    """One page of ``stmt`` (a ``select(model)`` with its filters) in ``(created_at, id)`` order."""
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(model.created_at > created_at, and_(model.created_at == created_at, model.id > row_id)))
    rows = list(session.scalars(stmt.order_by(model.created_at, model.id).limit(limit + 1)))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return Page(rows=rows, next_cursor=next_cursor, total=total)
