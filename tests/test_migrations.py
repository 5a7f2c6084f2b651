"""Alembic is wired to the ORM: migrations build the schema on PostgreSQL and SQLite, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db import upgrade_database
from app.models import Base


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_postgres_schema_built_by_migrations_matches_models(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    assert _diff(postgres_url) == []


def test_sqlite_migrations_apply_and_match_models(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_database(url)
    upgrade_database(url)  # idempotent: a second run is a no-op
    assert _diff(url) == []


def test_tagsift_migrate_command_applies_to_configured_database(tmp_path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TAGSIFT_DATA_DIR": str(tmp_path / "var")}
    env.pop("TAGSIFT_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "is at head" in out.stdout
    engine = create_engine(f"sqlite:///{tmp_path / 'var' / 'tagsift.db'}")
    assert {"datasets", "items", "jobs", "models"} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_sqlite_0009_drops_and_restores_the_redundant_item_indexes_keeping_rows(tmp_path) -> None:
    """0009 drops three item indexes that the (dataset_id, ...) ones serve; its downgrade builds them again, and the
    rows and the expression indexes of 0007 stay as they were both ways (the downgrades of 0010 and 0011 drop their
    columns in place: a SQLite table rebuild of datasets would cascade to its items)."""
    from alembic import command
    from sqlalchemy import text

    from app.db import alembic_config

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_database(url, "0008")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO owners (id, name, created_at) VALUES ('o', 'o', '2026-01-01')"))
        conn.execute(
            text(
                "INSERT INTO datasets (id, owner_id, name, classes, created_at, updated_at) "
                "VALUES ('d', 'o', 'd', '[\"a\", \"b\"]', '2026-01-01', '2026-01-01')"
            )
        )
        for seq in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO items (id, dataset_id, seq, file, sha256, width, height, candidates, needs_review, "
                    "created_at, updated_at) VALUES (:id, 'd', :seq, 'f.png', :sha, 8, 8, '[\"a\", \"b\"]', 0, "
                    "'2026-01-01', '2026-01-01')"
                ),
                {"id": f"i{seq}", "seq": seq, "sha": f"{seq:064x}"},
            )

    def indexes() -> set[str]:
        with engine.connect() as conn:
            return set(
                conn.execute(text("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='items'")).scalars()
            )

    def rows() -> list:
        with engine.connect() as conn:
            return conn.execute(text("SELECT id, seq FROM items ORDER BY seq")).all()

    before = indexes()
    dropped = {"ix_items_seq", "ix_items_dataset_id", "ix_items_needs_review"}
    assert dropped | {"ix_items_margin_order", "ix_items_review_margin"} <= before
    upgrade_database(url)
    assert indexes() == before - dropped
    assert rows() == [("i1", 1), ("i2", 2)]
    with engine.connect() as conn:  # 0011 filled the dataset's counts from the items already stored
        assert conn.execute(text("SELECT item_count, review_count FROM datasets")).all() == [(2, 0)]
    command.downgrade(alembic_config(url), "0008")
    assert indexes() == before
    assert rows() == [("i1", 1), ("i2", 2)]
    engine.dispose()
