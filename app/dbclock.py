"""The database's clock in SQL: :func:`db_now`, ``now() + seconds`` on PostgreSQL and on SQLite alike.

Leases are written and compared on one clock, the database server's, so that workers whose own clocks drift apart
(or a host whose clock jumps) agree on who holds a job (docs/deploy.md, Leases). Every lease timestamp in
``worker.leases`` is ``db_now(...)`` inside the ``UPDATE`` or ``SELECT`` itself; no worker-side ``datetime.now()``
decides whether a lease expired.

* PostgreSQL: ``now() + seconds * interval '1 second'`` (``now()`` is the transaction's start on the server, in
  ``timestamptz``; assigned to the ``timestamp`` columns it is converted with the session's time zone, as the
  application's own UTC datetimes are, so the two compare correctly).
* SQLite (the embedded default): ``strftime('%Y-%m-%d %H:%M:%f', 'now', '<+s> seconds')`` padded to microseconds:
  UTC in the very text form SQLAlchemy stores Python datetimes in, so comparisons stay text comparisons of equal
  shape. (``CURRENT_TIMESTAMP`` has whole seconds and another shape; it is not used.)
"""

from __future__ import annotations

from sqlalchemy import DateTime, Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now(FunctionElement):
    """The database server's current time plus ``seconds`` (may be negative), as a ``DateTime`` SQL expression."""

    type = DateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(literal(float(seconds), Float()))


@compiles(db_now)
def _db_now_default(element: db_now, compiler, **kw) -> str:
    (seconds,) = element.clauses
    return f"(now() + {compiler.process(seconds, **kw)} * interval '1 second')"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler, **kw) -> str:
    (seconds,) = element.clauses
    modifier = f"printf('%+.6f seconds', {compiler.process(seconds, **kw)})"
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', {modifier}) || '000')"
