"""Webhooks through the API on the real PostgreSQL: registration and its URL checks, the outbox rows that job and
review changes write in their own transaction, the delivery log, and owners kept apart. Sending is the worker's
(``tests/worker/test_webhooks.py``)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from app.config import Settings
from app.db import session_scope
from app.models import Webhook, WebhookDelivery
from app.schemas import WEBHOOK_EVENTS
from tests.app.conftest import Api

#: A public address (no DNS needed: the machine has none for the internet); the tests never send to it.
PUBLIC_URL = "https://93.184.215.14/hooks/tagsift?x=1"


def _rows(table) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(table))


def _deliveries(api: Api, hook_id: str, **params) -> dict:
    r = api.get(f"/webhooks/{hook_id}/deliveries", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_register_read_list_delete(alice: Api) -> None:
    """The defaults a user gets: any host (`*`) whose addresses are public; every event."""
    r = alice.post("/webhooks", json={"url": PUBLIC_URL, "description": "ci"})
    assert r.status_code == 201, r.text
    hook = r.json()
    assert r.headers["location"] == f"/webhooks/{hook['id']}"
    assert hook["url"] == PUBLIC_URL and hook["events"] == list(WEBHOOK_EVENTS) and hook["description"] == "ci"
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    read = alice.get(f"/webhooks/{hook['id']}").json()
    assert "secret" not in read and read == {k: v for k, v in hook.items() if k != "secret"}
    listed = alice.get("/webhooks").json()
    assert listed == {"data": [read], "next_cursor": None, "total": 1}
    second = alice.post("/webhooks", json={"url": PUBLIC_URL, "events": ["job.failed", "job.failed"]}).json()
    assert second["events"] == ["job.failed"] and second["secret"] != hook["secret"]
    assert alice.get("/webhooks").json()["total"] == 2
    first = alice.get("/webhooks", params={"limit": 1}).json()
    assert first["data"] == [read] and first["total"] == 2 and first["next_cursor"]
    rest = alice.get("/webhooks", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [h["id"] for h in rest["data"]] == [second["id"]] and rest["next_cursor"] is None

    assert alice.delete(f"/webhooks/{hook['id']}").status_code == 204
    assert alice.get(f"/webhooks/{hook['id']}").status_code == 404
    assert alice.get(f"/webhooks/{hook['id']}/deliveries").status_code == 404
    assert alice.delete(f"/webhooks/{hook['id']}").status_code == 404
    assert [h["id"] for h in alice.get("/webhooks").json()["data"]] == [second["id"]]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("http://127.0.0.1:9/x", "127.0.0.1 is a loopback address"),
        ("http://localhost:9/x", "resolves to a refused address"),  # a name: resolved, every address checked
        ("http://[::1]/x", "::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/x", "127.0.0.1 is a loopback address"),  # IPv4-mapped IPv6
        ("http://10.1.2.3/x", "10.1.2.3 is a private address"),
        ("http://192.168.0.10/x", "is a private address"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://100.64.0.1/x", "non-public"),  # carrier-grade NAT
        ("http://0.0.0.0/x", "0.0.0.0 is a"),
        ("ftp://93.184.215.14/x", "the scheme must be http or https"),
        ("https://user:pw@93.184.215.14/x", "credentials in the URL"),
        ("https://93.184.215.14/x#frag", "fragment"),
        ("https://93.184.215.14/a b", "space or a control character"),
        ("not a url", "space or a control character"),
        ("https:///nohost", "no host"),
        ("https://tagsift-no-such-host.invalid/x", "does not resolve"),
        ("https://93.184.215.14:99999/x", "not a URL"),
    ],
)
def test_refused_urls_are_422_naming_the_field_and_store_nothing(alice: Api, url: str, needle: str) -> None:
    before = _rows(Webhook)
    r = alice.post("/webhooks", json={"url": url})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    errors = r.json()["errors"]
    assert errors[0]["field"] == "url" and needle in errors[0]["message"], errors
    assert _rows(Webhook) == before


def test_allowed_hosts_and_networks_settings(alice: Api, tagsift_env) -> None:
    tagsift_env(webhook_allowed_hosts="hooks.example.com, *.corp.example")
    r = alice.post("/webhooks", json={"url": PUBLIC_URL})
    assert r.status_code == 422
    assert "not allowed by TAGSIFT_WEBHOOK_ALLOWED_HOSTS (hooks.example.com, *.corp.example)" in r.text
    tagsift_env(webhook_allowed_hosts="")
    assert "TAGSIFT_WEBHOOK_ALLOWED_HOSTS ((none))" in alice.post("/webhooks", json={"url": PUBLIC_URL}).text
    # Loopback is refused until its network is allowed; an allowed host name still has its addresses checked.
    tagsift_env(webhook_allowed_hosts="localhost,127.0.0.1")
    assert alice.post("/webhooks", json={"url": "http://127.0.0.1:9/"}).status_code == 422
    tagsift_env(webhook_allowed_hosts="localhost,127.0.0.1", webhook_allowed_networks="127.0.0.0/8, ::1/128")
    for url in ("http://127.0.0.1:9/", "http://localhost:9/"):
        assert alice.post("/webhooks", json={"url": url}).status_code == 201, url
    assert alice.post("/webhooks", json={"url": "http://10.0.0.1/"}).status_code == 422  # host not allowed


def test_a_bad_networks_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGSIFT_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.0/8,not-a-net")
    with pytest.raises(ValidationError, match="TAGSIFT_WEBHOOK_ALLOWED_NETWORKS: 'not-a-net' is not a network"):
        Settings()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": PUBLIC_URL, "events": ["job.exploded"]}, "events"),
        ({"url": PUBLIC_URL, "events": []}, "events"),
        ({"url": PUBLIC_URL, "secret": "mine"}, "secret"),
        ({"events": ["job.failed"]}, "url"),
        ({"url": "x" * 2001}, "url"),
    ],
)
def test_bad_bodies_name_the_field(alice: Api, body: dict, field: str) -> None:
    r = alice.post("/webhooks", json=body)
    assert r.status_code == 422, r.text
    assert any(e["field"].split(".")[0] == field for e in r.json()["errors"]), r.json()


def test_state_changes_write_deliveries_in_their_transaction(alice: Api) -> None:
    everything = alice.post("/webhooks", json={"url": PUBLIC_URL}).json()
    reviews = alice.post("/webhooks", json={"url": PUBLIC_URL, "events": ["item.reviewed"]}).json()
    ds = alice.make_dataset(4, offset=4100)

    job = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 2}).json()
    cancelled = alice.post(f"/jobs/{job['id']}/cancel").json()  # still queued: cancelled at once
    assert cancelled["status"] == "cancelled"
    item = alice.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    reviewed = alice.patch(f"/items/{item['id']}", json={"label": item["candidates"][0]}).json()
    # A change that is refused writes nothing.
    assert alice.patch(f"/items/{item['id']}", json={"label": "zebra"}).status_code == 422
    assert alice.post(f"/jobs/{job['id']}/cancel").status_code == 409

    log = _deliveries(alice, everything["id"])
    assert log["total"] == 3 and log["next_cursor"] is None
    assert [d["event"] for d in log["data"]] == ["item.reviewed", "job.cancelled", "job.queued"]  # newest first
    for d in log["data"]:
        assert d["status"] == "pending" and d["attempts"] == 0 and d["log"] == [] and d["next_attempt_at"]
        body = d["payload"]
        assert body["id"] == d["id"] and body["type"] == d["event"] and body["webhook_id"] == everything["id"]
        assert body["created_at"].endswith("Z")
    review, cancel, queued = (d["payload"]["data"] for d in log["data"])
    assert queued["job"]["id"] == job["id"] and queued["job"]["status"] == "queued"
    assert queued["job"]["params"] == job["params"]
    assert cancel["job"] == json.loads(json.dumps(cancelled))  # the job as GET /jobs/{id} shows it
    assert review["item"] == reviewed and review["previous"] == {"label": None, "label_source": None}
    assert review["action"] == "assign" and review["reviewer"]

    only_reviews = _deliveries(alice, reviews["id"])
    assert [d["event"] for d in only_reviews["data"]] == ["item.reviewed"]
    assert only_reviews["data"][0]["id"] != log["data"][0]["id"]  # one delivery id per hook


def test_delivery_log_pages_and_filters(alice: Api) -> None:
    hook = alice.post("/webhooks", json={"url": PUBLIC_URL, "events": ["item.reviewed"]}).json()
    ds = alice.make_dataset(5, offset=4200)
    items = alice.get(f"/datasets/{ds['id']}/items").json()["data"]
    for item in items:
        assert alice.patch(f"/items/{item['id']}", json={"label": item["candidates"][1]}).status_code == 200
    seen, cursor, pages = [], None, 0
    while True:
        page = _deliveries(alice, hook["id"], limit=2, **({"cursor": cursor} if cursor else {}))
        assert page["total"] == 5
        seen += [d["payload"]["data"]["item"]["id"] for d in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == [i["id"] for i in reversed(items)]
    assert _deliveries(alice, hook["id"], status="pending")["total"] == 5
    assert _deliveries(alice, hook["id"], status="succeeded") == {"data": [], "total": 0, "next_cursor": None}
    for bad in ({"cursor": "nonsense"}, {"cursor": "eyJkIjogLTF9"}, {"status": "lost"}, {"limit": 0}):
        r = alice.get(f"/webhooks/{hook['id']}/deliveries", params=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["errors"][0]["field"] in ("cursor", "status", "limit"), r.json()


def test_deleting_a_hook_drops_its_pending_deliveries(alice: Api) -> None:
    hook = alice.post("/webhooks", json={"url": PUBLIC_URL, "events": ["item.reviewed"]}).json()
    ds = alice.make_dataset(1, offset=4300)
    item = alice.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    alice.patch(f"/items/{item['id']}", json={"label": item["candidates"][0]})
    with session_scope() as session:
        n = session.scalar(select(func.count()).where(WebhookDelivery.webhook_id == hook["id"]))
    assert n == 1
    assert alice.delete(f"/webhooks/{hook['id']}").status_code == 204
    with session_scope() as session:
        assert session.scalar(select(func.count()).where(WebhookDelivery.webhook_id == hook["id"])) == 0


def test_owners_see_only_their_hooks_and_events(alice: Api, bob: Api) -> None:
    mine = alice.post("/webhooks", json={"url": PUBLIC_URL}).json()
    ds = bob.make_dataset(1, offset=4400)
    item = bob.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    bob.patch(f"/items/{item['id']}", json={"label": item["candidates"][0]})  # bob's event: not alice's hook's
    assert _deliveries(alice, mine["id"])["total"] == 0
    assert bob.get("/webhooks").json() == {"data": [], "next_cursor": None, "total": 0}
    for method, url in (("GET", ""), ("DELETE", ""), ("GET", "/deliveries")):
        r = bob.client.request(method, f"/webhooks/{mine['id']}{url}", headers=bob.headers)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert alice.get(f"/webhooks/{mine['id']}").status_code == 200


def test_deleting_a_dataset_reports_the_queued_jobs_it_cancels(alice: Api) -> None:
    hook = alice.post("/webhooks", json={"url": PUBLIC_URL, "events": ["job.cancelled"]}).json()
    ds = alice.make_dataset(3, offset=4500)
    job = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 1}).json()
    assert alice.delete(f"/datasets/{ds['id']}").status_code == 204
    (delivery,) = _deliveries(alice, hook["id"])["data"]
    sent = delivery["payload"]["data"]["job"]
    assert sent["id"] == job["id"] and sent["status"] == "cancelled"
    assert sent["error"] == {"code": "cancelled", "message": "the dataset was deleted"}
    assert sent == {**alice.get(f"/jobs/{job['id']}").json(), "dataset_id": ds["id"]}  # then its dataset went


def test_a_label_studio_annotation_is_a_review_event(alice: Api) -> None:
    hook = alice.post("/webhooks", json={"url": PUBLIC_URL, "events": ["item.reviewed"]}).json()
    ds = alice.make_dataset(2, offset=4600)
    item = next(i for i in alice.get(f"/datasets/{ds['id']}/items").json()["data"] if i["file"] == "img0.png")
    r = alice.post(
        f"/label-studio/{ds['id']}/webhook",
        json={
            "action": "ANNOTATION_CREATED",
            "task": {"id": 7, "data": {"image": "/data/upload/1/img0.png"}},
            "annotation": {"result": [{"type": "choices", "value": {"choices": ["dog"]}}]},
        },
    )
    assert r.status_code < 300, r.text
    (delivery,) = _deliveries(alice, hook["id"])["data"]
    sent = delivery["payload"]["data"]
    assert sent["item"]["id"] == item["id"] and sent["item"]["label"] == "dog"
    assert sent["item"]["label_source"] == "reviewer" and sent["previous"] == {"label": None, "label_source": None}


def test_secrets_are_encrypted_at_rest_and_keys_rotate(alice: Api, tagsift_env) -> None:
    """With TAGSIFT_SECRET_KEYS the stored secret is sealed (the plain text appears nowhere in the row) and signs like
    the secret the client got; rotation: a new key first, `tagsift reencrypt-secrets` seals every secret (a legacy
    plain-text one too) with it, and the old key can then go."""
    import subprocess
    import sys
    from pathlib import Path

    from app.services.webhooks import sign

    old, new = "o" * 40, "n" * 40
    tagsift_env(secret_keys=old)
    hook = alice.post("/webhooks", json={"url": PUBLIC_URL}).json()
    with session_scope() as session:
        row = session.get(Webhook, hook["id"])
        assert row.secret.startswith("tse1:") and hook["secret"] not in row.secret, row.secret
        assert sign(row.secret, 17, b"{}") == sign(hook["secret"], 17, b"{}")
        legacy = Webhook(owner_id=row.owner_id, url=PUBLIC_URL, events=["job.failed"], secret="whsec_plain")
        session.add(legacy)
        session.commit()
        legacy_id = legacy.id
    tagsift_env(secret_keys=f"{new},{old}")
    tagsift = Path(sys.executable).with_name("tagsift")
    out = subprocess.run([str(tagsift), "reencrypt-secrets"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "webhook secrets encrypted" in out.stdout, out.stderr
    tagsift_env(secret_keys=new)  # the old key removed
    with session_scope() as session:
        row, plain = session.get(Webhook, hook["id"]), session.get(Webhook, legacy_id)
        assert row.secret.startswith("tse1:") and plain.secret.startswith("tse1:")
        assert sign(row.secret, 17, b"{}") == sign(hook["secret"], 17, b"{}")
        assert sign(plain.secret, 17, b"{}") == sign("whsec_plain", 17, b"{}")
        tampered = row.secret[:-3] + ("A" if row.secret[-3] != "A" else "B") + row.secret[-2:]
    from app.secretbox import SecretKeyError

    with pytest.raises(SecretKeyError):
        sign(tampered, 17, b"{}")
    tagsift_env(secret_keys=old)  # only the old key: the resealed secrets no longer open
    with pytest.raises(SecretKeyError, match="no key in TAGSIFT_SECRET_KEYS"):
        sign(row.secret, 17, b"{}")
    with pytest.raises(ValidationError, match="TAGSIFT_SECRET_KEYS"):
        Settings(secret_keys="short")
    # a delivery whose secret no configured key opens is a failed attempt naming the problem, never a crash
    from worker.webhooks import Due, send

    due = Due(1, "d1", "job.failed", "https://93.184.215.14/h", row.secret, b"{}", 1, [])
    outcome = send(due, tagsift_env(secret_keys=old))
    assert outcome.status_code is None and outcome.error.startswith("cannot sign: no key in TAGSIFT_SECRET_KEYS")
