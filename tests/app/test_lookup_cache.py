"""The per-process lookup caches: API key -> owner, and (owner, model) -> artifacts for /predict."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import update

from app.db import session_scope
from app.models import ApiKey
from app.services.api_keys import hash_key
from app.ttl_cache import TTLCache
from tests.app.conftest import Api


def test_ttl_cache_expires_evicts_and_ignores_non_positive_ttl() -> None:
    cache: TTLCache[int] = TTLCache(size=2)
    cache.put("a", 1, ttl=60)
    cache.put("b", 2, ttl=0.2)
    cache.put("zero", 3, ttl=0)
    assert cache.get("a") == 1 and cache.get("b") == 2 and cache.get("zero") is None
    time.sleep(0.25)
    assert cache.get("b") is None and len(cache) == 1  # expired entries go on read
    cache.put("c", 3, ttl=60)
    cache.get("a")  # "a" is now the most recently used: "c" goes first
    cache.put("d", 4, ttl=60)
    assert cache.get("c") is None and cache.get("a") == 1 and cache.get("d") == 4


def _revoke(key: str) -> None:
    with session_scope() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=datetime.now(UTC)))


def test_a_revoked_key_stops_working_within_the_cache_time(alice: Api, tagsift_env) -> None:
    tagsift_env(lookup_cache_seconds="0.5")
    assert alice.get("/datasets").status_code == 200  # resolved and remembered
    _revoke(alice.key)
    assert alice.get("/datasets").status_code == 200  # still remembered
    time.sleep(0.6)
    r = alice.get("/datasets")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_with_no_cache_time_a_revoked_key_fails_at_once(bob: Api, tagsift_env) -> None:
    tagsift_env(lookup_cache_seconds="0")
    assert bob.get("/datasets").status_code == 200
    _revoke(bob.key)
    assert bob.get("/datasets").status_code == 401


def test_unknown_keys_are_never_remembered(alice: Api) -> None:
    from app.api.deps import owner_cache

    before = len(owner_cache)
    for i in range(3):
        r = alice.client.get("/datasets", headers={"Authorization": f"Bearer tsk_unknown{i}"})
        assert r.status_code == 401
    assert len(owner_cache) == before
