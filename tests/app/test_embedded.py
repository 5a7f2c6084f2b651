"""Smoke run of the API on the embedded default: SQLite database and the SQLite broker under a temp data dir."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.db import session_scope
from app.main import create_app
from app.services.api_keys import create_api_key
from tests.app.conftest import Api


def test_embedded_upload_review_job_labels(embedded_env: Settings) -> None:
    assert embedded_env.is_embedded
    with session_scope() as session:
        key = create_api_key(session=session, owner_name="solo")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        api = Api(client=client, key=key, settings=embedded_env)
        ds = api.make_dataset(5)
        page = api.get(f"/datasets/{ds['id']}/items", params={"limit": 2}).json()
        assert len(page["data"]) == 2 and page["next_cursor"]
        rest = api.get(f"/datasets/{ds['id']}/items", params={"cursor": page["next_cursor"]}).json()
        assert len(rest["data"]) == 3 and rest["next_cursor"] is None
        item = page["data"][0]
        assert api.patch(f"/items/{item['id']}", json={"label": "lynx"}).json()["label_source"] == "reviewer"
        assert api.get(item["image_url"]).status_code == 200

        r = api.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 2}, headers={"Idempotency-Key": "once"})
        assert r.status_code == 202, r.text
        again = api.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 2}, headers={"Idempotency-Key": "once"})
        assert again.json()["id"] == r.json()["id"]
        assert api.get(r.headers["location"]).json()["status"] == "queued"
        assert api.post(f"/jobs/{r.json()['id']}/cancel").json()["status"] == "cancelled"

        labels = api.get(f"/datasets/{ds['id']}/labels", params={"format": "csv"}).text.splitlines()
        assert len(labels) == 6 and "reviewer" in labels[1]
        assert client.get("/readyz").status_code == 200
        assert api.delete(f"/datasets/{ds['id']}").status_code == 204
