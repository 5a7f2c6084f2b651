"""Engine and sessions. One engine per process, built from the settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.config import get_settings


def make_engine(url: str, *, one_shot: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout (API + worker share it).

    ``one_shot`` engines keep no pooled connections (migrations, CLI commands).
    """
    if url.startswith("sqlite"):
        kwargs = {"poolclass": NullPool} if one_shot else {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised via engine use
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if one_shot:
        return create_engine(url, poolclass=NullPool)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args={"connect_timeout": 5})


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (tasks, CLI)."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def in_session(fn, /, **kwargs):
    """``fn(session=..., **kwargs)`` with a session of its own, opened and closed in the calling thread: the one
    blocking call an async handler hands to the thread pool (``run_in_threadpool(in_session, fn, ...)``)."""
    session = get_sessionmaker()()
    try:
        return fn(session=session, **kwargs)
    finally:
        session.close()


def reset_caches() -> None:
    """Forget the cached settings, engine and sessionmaker (tests that change the environment)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    get_settings.cache_clear()
    from app import queue, storage

    queue.get_celery.cache_clear()
    storage.get_storage.cache_clear()


def migrations_dir() -> str:
    """The Alembic script folder (shipped beside the ``app`` package, in a checkout and when installed)."""
    from pathlib import Path

    return str(Path(__file__).resolve().parent.parent / "migrations")


def alembic_config(url: str):
    """The Alembic configuration of tagsift's migrations against ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_dir())
    cfg.attributes["database_url"] = url
    return cfg


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Apply Alembic migrations to ``url`` (default: the configured database)."""
    from alembic import command

    url = url or get_settings().database_url
    if url.startswith("sqlite"):
        get_settings().data_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)
