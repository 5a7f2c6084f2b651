"""Webhook deliveries sent by a real ``tagsift worker`` process to a real HTTP server on loopback.

Jobs are made and cancelled through the API (a TestClient on the real PostgreSQL and Redis), run by the worker, and
every state change reaches the receiver: signed (checked with the code printed in docs/integrations.md), retried
with backoff while the receiver fails, the same delivery id on every attempt, and the whole story in the delivery log.
The API itself never connects to the receiver.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select

from app.db import session_scope
from app.main import create_app
from app.models import Item, Webhook, WebhookDelivery
from app.services.api_keys import create_api_key
from tests.app.conftest import Api
from tests.worker.conftest import CLASSES, color_image, wait_for, wait_status
from worker import webhooks as sender

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def docs_verify():
    """The ``verify`` function of docs/integrations.md's webhook section, as printed there."""
    section = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8").split("## Webhooks", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 14, "the docs promise a short check"
    namespace: dict = {}
    exec(compile(code, "docs/integrations.md", "exec"), namespace)
    return namespace["verify"]


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers 500 to the first ``fail_first`` attempts
    of each delivery id, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[dict] = []
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    delivery = self.headers.get("Tagsift-Delivery", "")
                    receiver.counts[delivery] += 1
                    fail = receiver.counts[delivery] <= receiver.fail_first
                    receiver.requests.append(
                        {"path": self.path, "headers": self.headers, "body": body, "at": time.time(), "failed": fail}
                    )
                answer = b"not yet" if fail else b"ok"
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(fail_first=2)
    yield server
    server.close()


@pytest.fixture
def api(prod_env, tagsift_env) -> Iterator[Api]:
    """An owner's API client; loopback allowed for webhooks (the tests' receiver), fast retries and polling. The
    worker processes started later inherit the same environment."""
    settings = tagsift_env(
        webhook_allowed_networks="127.0.0.0/8", webhook_retry_seconds="0.3", webhook_poll_seconds="0.1"
    )
    with session_scope() as session:
        session.execute(delete(Webhook))  # earlier tests' hooks (this run's database): workers would send theirs too
        key = create_api_key(session=session, owner_name=f"hooks-{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield Api(client=client, key=key, settings=settings)


def _colour_dataset(api: Api, n: int = 10) -> str:
    rows, images = [], {}
    for i in range(n):
        colour, other = CLASSES[i % 3], CLASSES[(i + 1) % 3]
        rows.append({"file": f"c{i}.png", "candidates": sorted({colour, other})})
        images[f"c{i}.png"] = color_image(i, colour)
    r = api.upload("/datasets", rows, images, name="colours", classes=CLASSES)
    assert r.status_code == 201, r.text
    return r.json()["id"]


JOB = {"method": "coop", "loss": "rc", "epochs": 2, "batch_size": 8, "n_ctx": 4}


def _log(api: Api, hook_id: str) -> list[dict]:
    r = api.get(f"/webhooks/{hook_id}/deliveries", params={"limit": 100})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def test_job_events_reach_the_receiver_signed_retried_and_logged(api: Api, receiver: Receiver, start_worker) -> None:
    verify = docs_verify()
    created = api.post("/webhooks", json={"url": f"{receiver.url}/tagsift?team=ml"})
    assert created.status_code == 201, created.text
    hook = created.json()

    ok_ds, broken_ds = _colour_dataset(api), _colour_dataset(api)
    ok = api.post(f"/datasets/{ok_ds}/jobs", json=JOB).json()
    broken = api.post(f"/datasets/{broken_ds}/jobs", json=JOB).json()
    with session_scope() as session:  # the items vanish behind the API's back: the worker fails the job
        session.execute(delete(Item).where(Item.dataset_id == broken_ds))
    dropped = api.post(f"/datasets/{ok_ds}/jobs", json={**JOB, "seed": 2}).json()
    assert api.post(f"/jobs/{dropped['id']}/cancel").json()["status"] == "cancelled"

    # The API only wrote outbox rows: nothing was sent before a worker runs.
    time.sleep(1.0)
    assert receiver.requests == []
    assert {d["status"] for d in _log(api, hook["id"])} == {"pending"}

    # Leases long enough that a slow machine never sees a run reaped and re-run (that would add events).
    worker = start_worker(TAGSIFT_JOB_LEASE_SECONDS="120", TAGSIFT_JOB_REQUEUE_AFTER_SECONDS="300")
    assert wait_status(ok["id"], ("succeeded", "failed"), timeout=180).status == "succeeded", worker.log()[-3000:]
    failed = wait_status(broken["id"], ("succeeded", "failed"), timeout=60)
    assert failed.status == "failed" and failed.error_code == "invalid_input"

    expected = {
        ok["id"]: ["job.queued", "job.started", "job.succeeded"],
        broken["id"]: ["job.queued", "job.started", "job.failed"],
        dropped["id"]: ["job.queued", "job.cancelled"],
    }
    n = sum(len(v) for v in expected.values())
    try:
        wait_for(lambda: len([d for d in _log(api, hook["id"]) if d["status"] == "succeeded"]) >= n, 60, "deliveries")
    except AssertionError:
        raise AssertionError(f"{_log(api, hook['id'])}\n{worker.log()[-3000:]}") from None
    log = _log(api, hook["id"])
    assert len(log) == n, [(d["event"], d["payload"]["data"]["job"]["attempt"]) for d in log]

    # The delivery log: two failures then one success each, with backoff between the attempts.
    for d in log:
        assert d["status"] == "succeeded" and d["attempts"] == 3 and d["last_status_code"] == 200, d
        assert [a["attempt"] for a in d["log"]] == [1, 2, 3]
        assert [a["status_code"] for a in d["log"]] == [500, 500, 200]
        assert [a["error"] for a in d["log"]] == ["HTTP 500: not yet", "HTTP 500: not yet", None]
        assert d["last_error"] is None and d["next_attempt_at"] is None and d["finished_at"]
        at = [datetime.fromisoformat(a["at"]) for a in d["log"]]
        assert (at[1] - at[0]).total_seconds() >= 0.3 and (at[2] - at[1]).total_seconds() >= 0.6, at
    by_job: dict[str, list[tuple[datetime, str]]] = {}
    for d in log:
        by_job.setdefault(d["payload"]["data"]["job"]["id"], []).append((d["created_at"], d["event"]))
    assert {job: [e for _, e in sorted(events)] for job, events in by_job.items()} == expected

    # What the receiver got: 3 requests per delivery, identical bodies, the id in header and body, all signed.
    assert len(receiver.requests) == 3 * n
    bodies: dict[str, set[bytes]] = {}
    for req in receiver.requests:
        headers, body = req["headers"], req["body"]
        assert req["path"] == "/tagsift?team=ml"
        assert headers["Content-Type"] == "application/json" and headers["User-Agent"] == "tagsift-webhooks/1"
        assert verify(hook["secret"], headers, body), headers
        assert not verify("whsec_" + "x" * 43, headers, body)
        assert not verify(hook["secret"], headers, body.replace(b'"job.', b'"jab.'))
        payload = json.loads(body)
        assert payload["id"] == headers["Tagsift-Delivery"] and payload["type"] == headers["Tagsift-Event"]
        assert payload["webhook_id"] == hook["id"]
        assert abs(int(headers["Tagsift-Timestamp"]) - req["at"]) < 5
        bodies.setdefault(headers["Tagsift-Delivery"], set()).add(body)
    assert set(bodies) == {d["id"] for d in log} and all(len(b) == 1 for b in bodies.values())
    assert sorted(int(r["headers"]["Tagsift-Attempt"]) for r in receiver.requests) == sorted([1, 2, 3] * n)
    # An old timestamp is refused by the documented check even with a correct signature.
    old = {**dict(receiver.requests[0]["headers"]), "Tagsift-Timestamp": str(int(time.time()) - 3600)}
    assert not verify(hook["secret"], old, receiver.requests[0]["body"])

    # The succeeded event carries the job as the API shows it, model included.
    (succeeded,) = [d for d in log if d["event"] == "job.succeeded"]
    sent_job = succeeded["payload"]["data"]["job"]
    assert sent_job == api.get(f"/jobs/{ok['id']}").json() and sent_job["model_id"]
    (failed_event,) = [d for d in log if d["event"] == "job.failed"]
    assert failed_event["payload"]["data"]["job"]["error"]["code"] == "invalid_input"
    assert "webhook delivery" in worker.log()


def test_a_review_reaches_the_receiver_and_a_refused_address_is_never_contacted(
    api: Api, receiver: Receiver, tagsift_env
) -> None:
    """In-process sends (the worker's code, without its thread): the URL is checked again at every attempt, so a
    hook whose address is no longer allowed is refused without a connection, and fails after its last attempt."""
    receiver.fail_first = 0
    hook = api.post("/webhooks", json={"url": f"{receiver.url}/r", "events": ["item.reviewed"]}).json()
    ds = _colour_dataset(api, 3)
    item = api.get(f"/datasets/{ds}/items").json()["data"][0]
    reviewed = api.patch(f"/items/{item['id']}", json={"label": item["candidates"][1]}).json()

    settings = api.settings.model_copy(update={"webhook_max_attempts": 2})
    (due,) = sender.claim_due(settings)
    assert sender.claim_due(settings) == []  # taken: a second worker does not get it
    assert sender.deliver(due, settings) == "succeeded"
    (req,) = receiver.requests
    assert docs_verify()(hook["secret"], req["headers"], req["body"])
    sent = json.loads(req["body"])["data"]
    assert sent["item"] == reviewed and sent["previous"] == {"label": None, "label_source": None}

    # The same hook after the operator withdrew loopback (as a DNS change to a private address would look).
    api.patch(f"/items/{item['id']}", json={"label": item["candidates"][0]})
    strict = tagsift_env(webhook_allowed_networks="").model_copy(update={"webhook_max_attempts": 2})
    for attempt, status in ((1, "pending"), (2, "failed")):
        (due,) = wait_for(lambda: sender.claim_due(strict), 5, f"attempt {attempt} to be due")
        assert due.attempt == attempt and sender.deliver(due, strict) == status
    assert len(receiver.requests) == 1  # never contacted again
    latest = _log(api, hook["id"])[0]
    assert latest["status"] == "failed" and latest["attempts"] == 2 and latest["last_status_code"] is None
    assert [a["error"] for a in latest["log"]] == [
        "refused: host '127.0.0.1' resolves to a refused address: 127.0.0.1 is a loopback address (allow its network"
        " with TAGSIFT_WEBHOOK_ALLOWED_NETWORKS)"
    ] * 2
    with session_scope() as session:
        assert (
            session.scalar(select(WebhookDelivery.next_attempt_at).where(WebhookDelivery.delivery_id == latest["id"]))
            is None
        )


def test_the_claim_and_the_reaper_report_their_state_changes(prod_env) -> None:
    """Every worker-side change of a job's status writes its event in the same transaction: started (each run),
    queued again by the reaper, failed when attempts run out, cancelled when a cancel beat the run."""
    from sqlalchemy import update

    from app.dbclock import db_now
    from app.models import Job
    from tests.worker.conftest import make_dataset, make_job
    from worker.leases import ClaimOutcome, claim_job, reap_once

    owner, ds, _ = make_dataset(3)
    with session_scope() as session:
        hook = Webhook(
            owner_id=owner,
            url="https://93.184.215.14/h",
            events=["job.started", "job.queued", "job.failed", "job.cancelled"],
            secret="whsec_test",
        )
        session.add(hook)
        session.flush()
        hook_id = hook.id

    def sent() -> list[tuple[str, str, int]]:
        with session_scope() as session:
            rows = session.scalars(
                select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook_id).order_by(WebhookDelivery.id)
            )
            return [
                (r.event, json.loads(r.body)["data"]["job"]["status"], json.loads(r.body)["data"]["job"]["attempt"])
                for r in rows
            ]

    job_id = make_job(owner, ds, max_attempts=2)

    def expire() -> None:  # the lease ran out (on the database's clock), as a runner that stopped renewing leaves it
        with session_scope() as session:
            session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=db_now(-1)))

    assert claim_job(job_id, runner="a", lease_seconds=60).outcome == ClaimOutcome.CLAIMED
    assert claim_job(job_id, runner="a", lease_seconds=60).outcome == ClaimOutcome.CLAIMED  # same runner: no event
    expire()
    assert reap_once(requeue_after_seconds=300)
    assert claim_job(job_id, runner="b", lease_seconds=60).attempt == 2
    expire()
    assert claim_job(job_id, runner="c", lease_seconds=60).outcome == ClaimOutcome.EXHAUSTED
    cancelled = make_job(owner, ds)
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == cancelled).values(cancel_requested=True))
    assert claim_job(cancelled, runner="d", lease_seconds=60).outcome == ClaimOutcome.CANCELLED
    assert sent() == [
        ("job.started", "running", 1),
        ("job.queued", "queued", 1),
        ("job.started", "running", 2),
        ("job.failed", "failed", 2),
        ("job.cancelled", "cancelled", 0),
    ]


def test_embedded_default_worker_delivers_with_default_timings(embedded_env, tagsift_env, start_worker) -> None:
    """The embedded default (SQLite database and broker) with the default poll, retry and timeout settings: a review
    made through the API reaches the receiver through a real worker."""
    settings = tagsift_env(webhook_allowed_networks="127.0.0.1/32")
    assert settings.is_embedded and settings.webhook_poll_seconds == 1.0 and settings.webhook_max_attempts == 10
    server = Receiver(fail_first=1)
    try:
        with session_scope() as session:
            key = create_api_key(session=session, owner_name="embedded-hooks")
        with TestClient(create_app(), raise_server_exceptions=False) as client:
            api = Api(client=client, key=key, settings=settings)
            hook = api.post("/webhooks", json={"url": f"{server.url}/e", "events": ["item.reviewed"]}).json()
            ds = _colour_dataset(api, 3)
            item = api.get(f"/datasets/{ds}/items").json()["data"][0]
            assert api.patch(f"/items/{item['id']}", json={"label": item["candidates"][0]}).status_code == 200
            worker = start_worker()
            # 1 s poll, a failure, a 10 s wait (the default first retry), the success
            wait_for(lambda: _log(api, hook["id"])[0]["status"] == "succeeded", 60, "the delivery")
            (delivery,) = _log(api, hook["id"])
        assert [a["status_code"] for a in delivery["log"]] == [500, 200]
        first, second = (datetime.fromisoformat(a["at"]) for a in delivery["log"])
        assert 10 <= (second - first).total_seconds() < 20, worker.log()[-2000:]
        assert all(docs_verify()(hook["secret"], r["headers"], r["body"]) for r in server.requests)
    finally:
        server.close()


def test_finished_deliveries_leave_the_log_after_the_retention(prod_env, tagsift_env) -> None:
    from datetime import timedelta

    from tests.worker.conftest import make_dataset
    from worker.leases import utcnow

    owner, _, _ = make_dataset(1)
    now = utcnow()
    with session_scope() as session:
        hook = Webhook(owner_id=owner, url="https://93.184.215.14/h", events=["item.reviewed"], secret="whsec_t")
        session.add(hook)
        session.flush()
        ages = {"old-ok": ("succeeded", 31), "old-failed": ("failed", 40), "new-ok": ("succeeded", 29)}
        for name, (status, days) in ages.items():
            session.add(
                WebhookDelivery(
                    delivery_id=f"{name}-{uuid.uuid4().hex[:8]}",
                    webhook_id=hook.id,
                    event="item.reviewed",
                    body="{}",
                    status=status,
                    finished_at=now - timedelta(days=days),
                    created_at=now - timedelta(days=days),
                )
            )
        old_pending = WebhookDelivery(
            delivery_id=f"old-pending-{uuid.uuid4().hex[:8]}",
            webhook_id=hook.id,
            event="item.reviewed",
            body="{}",
            created_at=now - timedelta(days=90),
        )
        session.add(old_pending)
        hook_id = hook.id

    def left() -> list[str]:
        with session_scope() as session:
            ids = session.scalars(select(WebhookDelivery.delivery_id).where(WebhookDelivery.webhook_id == hook_id))
            return sorted(i.split("-")[0] + "-" + i.split("-")[1] for i in ids)

    assert sender.prune(tagsift_env(webhook_log_days="0"), now=now) == 0  # 0: kept forever
    assert len(left()) == 4
    assert sender.prune(tagsift_env(webhook_log_days="30"), now=now) == 2  # the default
    assert left() == ["new-ok", "old-pending"]  # a pending delivery is never dropped
