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
