"""Response bodies streamed from the database in constant memory: one read-only snapshot, keyset-paged reads.

An export of a dataset of any size reads its items ``EXPORT_PAGE`` rows at a time, in upload order (``seq > last``
on the ``(dataset_id, seq)`` index), and yields each page's text before it reads the next, so the API process holds
one page, never the dataset. Every read of one export is in one snapshot of the database (PostgreSQL: a
``REPEATABLE READ`` transaction; SQLite: one read transaction), so the headers, a JSON head that counts the rows and
the rows themselves agree even while a job writes labels meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Row, Select
from sqlalchemy.orm import Session

from app.db import get_sessionmaker
from app.models import Item

#: Rows per database read of a streamed export.
EXPORT_PAGE = 1000

T = TypeVar("T")


def snapshot_session() -> Session:
    """A new session whose reads all see one snapshot of the database (the caller closes it)."""
    session = get_sessionmaker()()
    try:
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        else:  # pysqlite begins transactions only for writes: begin the read transaction explicitly
            session.connection().exec_driver_sql("BEGIN")
    except BaseException:
        session.close()
        raise
    return session


def stream_in_snapshot(
    head: Callable[[Session], T], body: Callable[[Session, T], Iterator[str]]
) -> tuple[T, Iterator[str]]:
    """``head(session)`` now (what the response's headers need; an error there is an answer before any byte is
    sent) and ``body(session, head)`` as the response streams, both in one snapshot; the session closes when the
    body ends, fails, or is dropped unfinished (a client that went away)."""

    def run() -> Iterator[Any]:
        session = snapshot_session()
        try:
            value = head(session)
            yield value
            yield from body(session, value)
        finally:
            session.close()

    chunks = run()
    # started, the generator is suspended inside its ``try``: closing or collecting it unfinished closes the session
    return next(chunks), chunks


def item_pages(session: Session, stmt: Select, *, page: int | None = None) -> Iterator[Sequence[Row]]:
    """The rows of ``stmt`` (a select of ``Item.seq`` first, then any columns, filtered on one dataset) in upload
    order, a page of at most ``page`` rows at a time (default ``EXPORT_PAGE``), each read after the previous one is
    consumed."""
    size = page or EXPORT_PAGE
    last: int | None = None
    while True:
        query = stmt if last is None else stmt.where(Item.seq > last)
        rows = session.execute(query.order_by(Item.seq).limit(size)).all()
        if rows:
            yield rows
        if len(rows) < size:
            return
        last = rows[-1][0]
