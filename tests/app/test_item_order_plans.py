"""Item pages are index range scans in index order at any depth (issue 15, item 1), on PostgreSQL and SQLite.

The queries are the ones a request runs (``app.services.items.page_statement`` and ``review_queue.review_items``'s
order); the database's own plan must name the order's index and hold no sort, for the first page and for a cursor
deep in the listing. A margin order whose key were spelled differently from the index expression (a bound
parameter instead of the literal ``2.0``) would plan a sort of the whole dataset here.
"""

from __future__ import annotations

import random
import uuid

import pytest
from sqlalchemy import Select, func, insert, select, text
from sqlalchemy.dialects import postgresql

from app.db import get_engine, session_scope
from app.models import Dataset, Item, Owner, score_key
from app.services.items import page_statement

N = 3000


@pytest.fixture(params=["postgres", "sqlite"])
def dataset_id(request) -> str:
    request.getfixturevalue("prod_env" if request.param == "postgres" else "embedded_env")
    rng = random.Random(7)
    with session_scope() as session:
        owner = Owner(name=f"plans-{uuid.uuid4().hex[:8]}")
        session.add(owner)
        session.flush()
        dataset = Dataset(owner_id=owner.id, name="plans", classes=["a", "b"])
        session.add(dataset)
        session.flush()
        rows = []
        for seq in range(1, N + 1):
            margin = None if seq % 10 == 0 else rng.random()  # a tenth unlabelled
            rows.append(
                {
                    "id": uuid.uuid4().hex,
                    "dataset_id": dataset.id,
                    "seq": seq,
                    "file": f"{seq}.png",
                    "sha256": f"{seq:064x}",
                    "width": 8,
                    "height": 8,
                    "candidates": ["a", "b"],
                    "margin": margin,
                    "confidence": None if margin is None else 0.5 + margin / 2,
                    "needs_review": margin is not None and margin < 0.5,  # a queue too long to sort for one page
                }
            )
        # two other datasets' items around it, as in any shared deployment, with the same spread of margins and
        # review flags: the plan must not hinge on whether this dataset happens to be most of the table (other
        # tests' datasets come and go in the same database)
        for _ in range(2):
            other = Dataset(owner_id=owner.id, name="neighbour", classes=["a", "b"])
            session.add(other)
            session.flush()
            session.execute(
                insert(Item),
                [
                    {**row, "id": uuid.uuid4().hex, "dataset_id": other.id}  # the same spread of keys
                    for row in rows
                ],
            )
        session.execute(insert(Item), rows)
        dataset_id = dataset.id
    with get_engine().begin() as conn:
        conn.execute(text("ANALYZE items") if conn.dialect.name == "postgresql" else text("ANALYZE"))
    return dataset_id


def _plans(stmt: Select) -> list[str]:
    """The database's plans of ``stmt`` with its parameters: on PostgreSQL the custom plan (what one execution
    gets) and the generic plan (what a statement that psycopg prepared gets after a few runs); on SQLite its one."""
    engine = get_engine()
    with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            compiled = stmt.compile(dialect=engine.dialect)
            params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            return ["\n".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params))]
        compiled = stmt.compile(dialect=engine.dialect)
        custom = "\n".join(conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params).scalars())
        numbered = stmt.compile(dialect=postgresql.psycopg.dialect(paramstyle="numeric_dollar"))
        values = [compiled.params[name] for name in numbered.positiontup or ()]
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE page AS {numbered}")
        args = ", ".join(f"'{v}'" if isinstance(v, str) else repr(v) for v in values)  # hex ids and numbers
        generic = "\n".join(conn.exec_driver_sql(f"EXPLAIN EXECUTE page({args})").scalars())
        conn.exec_driver_sql("DEALLOCATE page")
        conn.rollback()
        return [custom, generic]


def _deep(dataset_id: str, needs_review: bool | None) -> tuple[float, int]:
    """The (key, seq) of an item ~90% into the margin order."""
    with session_scope() as session:
        stmt = select(score_key(Item.margin), Item.seq).where(Item.dataset_id == dataset_id)
        if needs_review is not None:
            stmt = stmt.where(Item.needs_review == needs_review)
        rows = session.execute(stmt.order_by(score_key(Item.margin), Item.seq)).all()
    k, s = rows[int(0.9 * len(rows))]
    return float(k), s


def _assert_index_scan(plans: list[str], *indexes: str) -> None:
    for plan in plans:
        if "SCAN" in plan or "SEARCH" in plan:  # SQLite: the index gives the order, no temporary b-tree sorts it
            assert any(f"USING INDEX {i}" in plan for i in indexes) and "TEMP B-TREE" not in plan, plan
        else:
            assert any(f"Index Scan using {i} on items" in plan for i in indexes) and "Sort" not in plan, plan


REVIEW = ("ix_items_review_margin",)
MARGIN = ("ix_items_margin_order",)


@pytest.mark.parametrize(
    ("needs_review", "order", "indexes"),
    [
        (True, "margin", REVIEW),  # the review queue
        (False, "margin", REVIEW + MARGIN),  # either gives the order (the second filtering on needs_review)
        (None, "margin", MARGIN),
        (None, "upload", ("ix_items_dataset_seq",)),
    ],
)
def test_pages_scan_the_order_index_at_the_first_page_and_deep(dataset_id: str, needs_review, order, indexes) -> None:
    deep = _deep(dataset_id, needs_review) if order == "margin" else int(0.9 * N)
    for after in (None, deep):
        stmt = page_statement(dataset_id, needs_review=needs_review, order=order, after=after).limit(101)
        _assert_index_scan(_plans(stmt), *indexes)


@pytest.mark.parametrize(("sort", "column"), [("margin", Item.margin), ("confidence", Item.confidence)])
def test_the_web_review_grid_order_is_an_index_scan(dataset_id: str, sort: str, column) -> None:
    """``review_queue.review_items``: needs_review first, then ``coalesce(score, 2.0), seq``."""
    stmt = (
        select(Item)
        .where(Item.dataset_id == dataset_id, Item.needs_review == True)  # noqa: E712 - SQL, as the service writes it
        .order_by(score_key(column), Item.seq)
        .offset(60)
        .limit(60)
    )
    _assert_index_scan(_plans(stmt), f"ix_items_review_{sort}")


def test_a_key_spelled_as_a_bound_parameter_would_sort_the_dataset(dataset_id: str) -> None:
    """Why the key is a literal: ``coalesce(margin, :param)`` matches no index in SQLite's plan, nor in
    PostgreSQL's generic plan (its custom plan folds the value in and happens to match)."""
    stmt = (
        select(Item)
        .where(Item.dataset_id == dataset_id, Item.needs_review == True)  # noqa: E712
        .order_by(func.coalesce(Item.margin, 2.0), Item.seq)
        .limit(101)
    )
    plan = _plans(stmt)[-1]
    assert "Sort" in plan or "TEMP B-TREE" in plan, plan
