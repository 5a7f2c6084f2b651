"""The API on an object store (a real SeaweedFS server of the test's own): uploads go to the bucket and nothing to
the API's disk; with the store down an upload answers 503 problem+json and stores no row; back up, it works."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.main import create_app
from app.models import Dataset, Item
from tests.app.conftest import Api, _key, image_bytes
from tests.conftest import s3_location, s3_settings


def _counts() -> tuple[int, int]:
    with session_scope() as session:
        datasets = session.scalar(select(func.count()).select_from(Dataset))
        items = session.scalar(select(func.count()).select_from(Item))
        return datasets, items


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_uploads_go_to_the_object_store_and_a_store_outage_is_a_503_with_nothing_stored(prod_env, own_s3, monkeypatch):
    env = s3_settings(monkeypatch, own_s3)
    bucket, prefix = s3_location(env)
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        api = Api(client=client, key=_key("s3"), settings=prod_env)
        ds = api.make_dataset(3)
        item = api.get(f"/datasets/{ds['id']}/items").json()["data"][0]
        image = api.get(f"/items/{item['id']}/image")
        assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
        assert len([k for k in own_s3.keys(bucket, f"{prefix}/blobs/")]) == 3
        assert not [p for p in _files(prod_env.data_dir) if "blobs" in p.parts]  # nothing on the API's disk

        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["storage"] is True
        before = _counts()
        own_s3.stop(kill=True)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["storage"] is False
        rows = [{"file": "new.png", "candidates": ["cat", "dog"]}]
        for url in ("/datasets", f"/datasets/{ds['id']}/items"):
            extra = (
                {"name": f"down-{uuid.uuid4().hex[:6]}", "classes": ["cat", "lynx", "dog"]}
                if url == "/datasets"
                else {}
            )
            r = api.upload(url, rows, {"new.png": image_bytes(999)}, **extra)
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            body = r.json()
            assert body["code"] == "storage_unavailable" and "nothing was stored" in body["detail"]
            assert r.headers["retry-after"] == "5"
        assert _counts() == before  # no dataset, no item row
        broken = api.get(f"/items/{item['id']}/image")
        assert broken.status_code == 503 and broken.json()["code"] == "storage_unavailable"

        own_s3.start()
        r = api.upload(f"/datasets/{ds['id']}/items", rows, {"new.png": image_bytes(999)})
        assert r.status_code == 201, r.text
        assert _counts() == (before[0], before[1] + 1)
