"""/healthz and /readyz against the real database and broker, and with each one down."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from tests.services import free_port


def test_healthz_answers_200(prod_env) -> None:
    with TestClient(create_app()) as client:
        assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_200_with_postgres_and_redis(prod_env) -> None:
    with TestClient(create_app()) as client:
        r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"database": True, "broker": True}


def test_readyz_is_503_when_the_broker_is_down(tagsift_env, postgres_url) -> None:
    tagsift_env(database_url=postgres_url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app()) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"] == {"database": True, "broker": False}


def test_readyz_is_503_when_the_database_is_down(tagsift_env, redis_url) -> None:
    tagsift_env(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nope", broker_url=redis_url)
    with TestClient(create_app()) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] is False


def test_readyz_on_the_embedded_default(embedded_env) -> None:
    with TestClient(create_app()) as client:
        r = client.get("/readyz")
    assert r.status_code == 200, r.text
