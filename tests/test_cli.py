"""The tagsift console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import create_engine, select, text

from app.services.api_keys import hash_key

BIN = Path(sys.executable).with_name("tagsift")


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = [str(BIN)] if BIN.exists() else [shutil.which("tagsift") or "tagsift"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=120, env=env)


def test_help_lists_the_commands() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for command in ("serve", "worker", "migrate", "create-api-key", "up", "bench"):
        assert command in out.stdout


def test_create_api_key_prints_a_key_stored_only_as_its_hash(postgres_url: str) -> None:
    env = {**os.environ, "TAGSIFT_DATABASE_URL": postgres_url}
    out = _run("create-api-key", "--owner", "cli-test-owner", env=env)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("tsk_") and len(key) > 30
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT k.key_hash FROM api_keys k JOIN owners o ON o.id = k.owner_id WHERE o.name = :n"),
            {"n": "cli-test-owner"},
        ).all()
    engine.dispose()
    assert [r[0] for r in rows] == [hash_key(key)]
    assert key not in str(rows)


def test_create_api_key_with_a_name_stores_it_and_the_key_signs_reviews(prod_env) -> None:
    """``create-api-key --owner T --name P``: the key row is named P, and the printed key opens the API as T, its
    reviews signed P."""
    from fastapi.testclient import TestClient

    from app.db import session_scope
    from app.main import create_app
    from app.models import ApiKey, ItemReview
    from app.services.api_keys import key_for_secret
    from tests.app.conftest import image_bytes, jsonl

    owner = f"cli-team-{uuid.uuid4().hex[:8]}"
    out = _run("create-api-key", "--owner", owner, "--name", "Pat Reviewer", env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    with session_scope() as session:
        row = key_for_secret(session=session, key=key)
        assert row is not None and (row.name, row.owner.name, row.prefix) == ("Pat Reviewer", owner, key[:12])
        key_id = row.id
        assert session.scalars(select(ApiKey).where(ApiKey.owner_id == row.owner_id)).all() == [row]
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app()) as client:
        assert client.get("/datasets", headers={"Authorization": "Bearer tsk_not-a-key"}).status_code == 401
        manifest = jsonl([{"file": "a.png", "candidates": ["cat", "dog"]}])
        made = client.post(
            "/datasets",
            data={"name": "by Pat"},
            files=[("manifest", ("m.jsonl", manifest, "application/x-ndjson")), ("images", ("a.png", image_bytes(5)))],
            headers=auth,
        )
        assert made.status_code == 201, made.text
        assert [d["name"] for d in client.get("/datasets", headers=auth).json()["data"]] == ["by Pat"]
        item_id = client.get(f"/datasets/{made.json()['id']}/items", headers=auth).json()["data"][0]["id"]
        assert client.patch(f"/items/{item_id}", json={"label": "dog"}, headers=auth).status_code == 200
    with session_scope() as session:
        review = session.scalars(select(ItemReview).where(ItemReview.item_id == item_id)).one()
        assert (review.reviewer, review.api_key_id, review.label) == ("Pat Reviewer", key_id, "dog")
    too_long = _run("create-api-key", "--owner", owner, "--name", "n" * 201, env=dict(os.environ))
    assert too_long.returncode != 0 and "name" in too_long.stderr


def test_list_and_revoke_api_keys(prod_env, tagsift_env) -> None:
    """``list-api-keys`` shows each key's prefix and state; ``revoke-api-key <prefix>`` makes the key a 401 (with
    TAGSIFT_LOOKUP_CACHE_SECONDS=0: nothing cached), by id or by the key as well; unknown and repeated revocations
    exit 1 naming the problem."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    tagsift_env(lookup_cache_seconds=0)
    env = dict(os.environ)
    owner = f"cli-revoke-{uuid.uuid4().hex[:8]}"
    keys = [
        _run("create-api-key", "--owner", owner, "--name", n, env=env).stdout.strip().splitlines()[-1] for n in "ab"
    ]
    listed = _run("list-api-keys", "--owner", owner, env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert [(line.split()[1], line.split()[-1]) for line in lines] == [(k[:12], "active") for k in keys], lines
    assert all(k not in listed.stdout for k in keys)  # never the key itself
    with TestClient(create_app()) as client:
        auth = [{"Authorization": f"Bearer {k}"} for k in keys]
        assert [client.get("/datasets", headers=h).status_code for h in auth] == [200, 200]
        out = _run("revoke-api-key", keys[0][:12], env=env)
        assert out.returncode == 0 and "revoked key " + keys[0][:12] in out.stdout, out.stderr
        assert [client.get("/datasets", headers=h).status_code for h in auth] == [401, 200]
        again = _run("revoke-api-key", keys[0][:12], env=env)
        assert again.returncode == 1 and "already revoked" in again.stderr, again.stderr
        assert _run("revoke-api-key", keys[1], env=env).returncode == 0  # by the key itself
        assert client.get("/datasets", headers=auth[1]).status_code == 401
    unknown = _run("revoke-api-key", "tsk_nosuchkey", env=env)
    assert unknown.returncode == 1 and "no API key" in unknown.stderr
    states = [line.split()[-2] for line in _run("list-api-keys", "--owner", owner, env=env).stdout.splitlines()]
    assert states == ["revoked", "revoked"], states
