"""Shared fixtures: a real PostgreSQL database (built by the migrations) and a real Redis per test run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.db import reset_caches, upgrade_database
from tests import services

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The settings as the environment gives them (before any test changes it)."""
    return Settings()


@pytest.fixture(scope="session")
def pg_admin_url(base_settings: Settings) -> Iterator:
    url, server = services.ensure_postgres(base_settings.test_postgres_url)
    yield url
    if server:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(pg_admin_url) -> Iterator[str]:
    """This test run's own PostgreSQL database, created by running the migrations."""
    db_url = services.create_database(pg_admin_url)
    url = db_url.render_as_string(hide_password=False)
    upgrade_database(url)
    yield url
    services.drop_database(pg_admin_url, db_url)


@pytest.fixture(scope="session")
def redis_url(base_settings: Settings) -> Iterator[str]:
    url, server = services.ensure_redis(base_settings.test_redis_url)
    yield url
    if server:
        server.stop()


@pytest.fixture
def tagsift_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Set TAGSIFT_* variables for one test and reset the cached settings/engine around it."""

    def apply(**values: str) -> Settings:
        for key, value in values.items():
            monkeypatch.setenv(f"TAGSIFT_{key.upper()}", str(value))
        reset_caches()
        from app.config import get_settings

        return get_settings()

    monkeypatch.setenv("TAGSIFT_DATA_DIR", str(tmp_path / "var"))
    for var in (
        "TAGSIFT_DATABASE_URL",
        "TAGSIFT_BROKER_URL",
        "TAGSIFT_QUEUE",
        "TAGSIFT_CPU_QUEUE",
        "TAGSIFT_GPU_QUEUE",
    ):
        monkeypatch.delenv(var, raising=False)
    reset_caches()
    yield apply
    reset_caches()


@pytest.fixture
def prod_env(tagsift_env, postgres_url: str, redis_url: str) -> Settings:
    """The production configuration: this run's PostgreSQL database, Redis, a queue of the test's own."""
    return tagsift_env(database_url=postgres_url, broker_url=redis_url, queue=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def embedded_env(tagsift_env) -> Settings:
    """The embedded default: SQLite and the SQLite broker under a temporary data dir, migrated."""
    settings = tagsift_env()
    upgrade_database()
    return settings


def pytest_report_header(config) -> list[str]:
    return [f"tagsift tests: TAGSIFT_TEST_POSTGRES_URL={os.environ.get('TAGSIFT_TEST_POSTGRES_URL', '(default)')}"]


@pytest.fixture(scope="session")
def s3_server() -> Iterator:
    """One real S3 server (SeaweedFS ``weed mini``) for the test run; tests that stop it use ``own_s3``."""
    from tests.s3 import SeaweedS3

    with services.started(SeaweedS3()) as server:
        yield server


@pytest.fixture
def own_s3() -> Iterator:
    """A started S3 server of this test's own, which the test may stop and start (ports and data kept)."""
    from tests.s3 import SeaweedS3

    with services.started(SeaweedS3()) as server:
        yield server


def s3_settings(monkeypatch: pytest.MonkeyPatch, server, bucket: str | None = None) -> dict[str, str]:
    """Point this test's TAGSIFT_STORAGE_URL at a new bucket (and prefix) of ``server``; returns the variables."""
    values = {
        "TAGSIFT_STORAGE_URL": f"s3://{bucket or server.new_bucket()}/run-{uuid.uuid4().hex[:8]}",
        "TAGSIFT_S3_ENDPOINT_URL": server.endpoint,
        **server.env,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_caches()
    return values


def s3_location(values: dict[str, str]) -> tuple[str, str]:
    """(bucket, prefix) of the TAGSIFT_STORAGE_URL that :func:`s3_settings` returned."""
    bucket, prefix = values["TAGSIFT_STORAGE_URL"].removeprefix("s3://").split("/", 1)
    return bucket, prefix


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tagsift_env, s3_server) -> dict[str, str]:
    """``tagsift_env`` with the blob store in a bucket of its own on the session's S3 server."""
    return s3_settings(monkeypatch, s3_server)
