"""The tagsift console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

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
