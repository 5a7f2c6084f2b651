"""Security against the real PostgreSQL: keys on every route, owners kept apart on every route that takes an id,
keys hashed at rest, no image fetched from a URL, and uploaded file names never used as paths.

The route lists are derived from the app (``app.routes`` and its OpenAPI schema), so a new route is covered (or
makes a test fail until it is added to the table below).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import socket
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select, text

from app.db import session_scope
from app.models import ApiKey, Dataset, Item, Job, JobEvent, Model, Webhook, WebhookDelivery
from app.services.api_keys import create_api_key
from tests.app.conftest import Api, image_bytes, jsonl
from tests.app.model_fixtures import BLUE, GREEN, RED, store_model
from tests.app.test_bad_input import Part, post_parts, stored, upload_parts
from tests.label_studio import LABEL_CONFIG

PUBLIC_PATHS = {"/healthz", "/readyz"}


def docs_paths(app: FastAPI) -> set[str]:
    paths = {p for p in (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url) if p}
    return paths | {"/docs", "/redoc"}  # served by app.web with vendored assets (docs_url=None)


def is_web_app(path: str) -> bool:
    """The web app's pages (cookie sessions, not API keys): their owner and CSRF cases are in tests/app/test_web.py."""
    return path == "/" or path == "/ui" or path.startswith("/ui/")


def route_table(app: FastAPI) -> list[tuple[str, str, object]]:
    """(method, path, route) for every route of the app, included routers flattened."""
    try:  # FastAPI >= 0.16x keeps included routers as one entry each; this walks into them
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(app.routes))
    except ImportError:  # pragma: no cover - older FastAPI: app.routes is already flat
        routes = list(app.routes)
    table = []
    for route in routes:
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                table.append((method, route.path, route))
    return table


def api_operations(app: FastAPI) -> list[tuple[str, str, object]]:
    """Every (method, path, route) served by an endpoint of ours (the docs routes excluded)."""
    ops = []
    for method, path, route in route_table(app):
        original = getattr(route, "original_route", route)
        if is_web_app(path):
            continue
        if path in docs_paths(app):
            assert path in ("/docs", "/redoc") or not isinstance(original, APIRoute), path
            continue
        assert isinstance(original, APIRoute), f"{method} {path}: not an APIRoute, add it to the checks"
        ops.append((method, path, route))
    return ops


def id_parameters(app: FastAPI, method: str, path: str, route) -> set[str]:
    """The ids an operation takes: path parameters, ``*_id`` query parameters and ``*_id`` body/form fields."""
    names = set(re.findall(r"{(\w+)}", path))
    names |= {p.name for p in route.dependant.query_params if p.name.endswith("_id")}
    body = app.openapi()["paths"][path][method.lower()].get("requestBody", {})
    for content in body.get("content", {}).values():
        names |= {n for n in content.get("schema", {}).get("properties", {}) if n.endswith("_id")}
    return names


# --- a world: two owners, each with a dataset, items, a job, events and a model ---------------------------


def build_world(api: Api, onnx: bytes) -> dict:
    rows = [
        {"file": "red.png", "candidates": ["cat", "lynx"]},
        {"file": "green.png", "candidates": ["cat", "dog"]},
        {"file": "blue.png", "candidates": ["lynx", "dog"]},
    ]
    tag = uuid.uuid4().hex[:6]
    hook = api.post("/webhooks", json={"url": "https://93.184.215.14/hook"})  # public: allowed by default
    assert hook.status_code == 201, hook.text
    r = api.upload("/datasets", rows, {"red.png": RED, "green.png": GREEN, "blue.png": BLUE}, name=f"private-{tag}")
    assert r.status_code == 201, r.text
    ds = r.json()
    job = api.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 3}, headers={"Idempotency-Key": f"key-{tag}"})
    assert job.status_code == 202, job.text
    model_id = store_model(ds["id"], onnx)
    items = api.get(f"/datasets/{ds['id']}/items").json()["data"]
    return {
        "dataset_id": ds["id"],
        "name": ds["name"],
        "item_id": items[0]["id"],
        "job_id": job.json()["id"],
        "job_key": f"key-{tag}",
        "model_id": model_id,
        "owner_id": _owner_id(ds["id"]),
        "webhook_id": hook.json()["id"],
    }


def _owner_id(dataset_id: str) -> str:
    with session_scope() as session:
        return session.scalar(select(Dataset.owner_id).where(Dataset.id == dataset_id))


def _row(obj) -> dict:
    return {attr.key: getattr(obj, attr.key) for attr in sa_inspect(obj).mapper.column_attrs}


def owner_state(owner_id: str) -> dict:
    """Every row an owner has (datasets, items, jobs, events, models, keys), column by column."""
    with session_scope() as session:
        datasets = session.scalars(select(Dataset).where(Dataset.owner_id == owner_id).order_by(Dataset.id)).all()
        ds_ids = [d.id for d in datasets]
        jobs = session.scalars(select(Job).where(Job.owner_id == owner_id).order_by(Job.id)).all()
        job_ids = [j.id for j in jobs]
        return {
            "datasets": [_row(d) for d in datasets],
            "items": [
                _row(i) for i in session.scalars(select(Item).where(Item.dataset_id.in_(ds_ids)).order_by(Item.id))
            ],
            "jobs": [_row(j) for j in jobs],
            "events": [_row(e) for e in session.scalars(select(JobEvent).where(JobEvent.job_id.in_(job_ids)))],
            "models": [_row(m) for m in session.scalars(select(Model).where(Model.owner_id == owner_id))],
            "keys": [_row(k) for k in session.scalars(select(ApiKey).where(ApiKey.owner_id == owner_id))],
            "webhooks": [_row(w) for w in session.scalars(select(Webhook).where(Webhook.owner_id == owner_id))],
            "deliveries": [
                _row(d)
                for d in session.scalars(
                    select(WebhookDelivery)
                    .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                    .where(Webhook.owner_id == owner_id)
                    .order_by(WebhookDelivery.id)
                )
            ],
        }


def everything(api: Api, victim: dict, attacker: dict) -> dict:
    """Both owners' rows, the data dir's files and the broker queue: an attack must change none of it."""
    queue = redis.Redis.from_url(api.settings.broker_url).llen(api.settings.queue)
    return {
        "victim": owner_state(victim["owner_id"]),
        "attacker": owner_state(attacker["owner_id"]),
        "files": stored(api)["files"],
        "queue": queue,
    }


# --- (b) the cases: every operation that takes an id, used by the attacker with the victim's ids -----------

Attack = Callable[[Api, dict, dict], object]  # (attacker client, victim ids, attacker ids) -> response


def _upload_to(attacker: Api, victim: dict, mine: dict):
    parts = upload_parts([{"file": "x.png", "candidates": ["cat"]}], [("x.png", image_bytes(4242))])
    return post_parts(attacker, f"/datasets/{victim['dataset_id']}/items", parts)


def _predict(model: str) -> Callable[[Api, dict, dict], object]:
    def attack(attacker: Api, victim: dict, mine: dict):
        model_id = (victim if model == "victim" else mine)["model_id"]
        return post_parts(attacker, "/predict", [("model_id", model_id.encode(), None), ("image", RED, "r.png")])

    return attack


ATTACKS: dict[tuple[str, str], list[tuple[str, Attack]]] = {
    ("GET", "/datasets/{dataset_id}"): [("read", lambda a, v, m: a.get(f"/datasets/{v['dataset_id']}"))],
    ("DELETE", "/datasets/{dataset_id}"): [("delete", lambda a, v, m: a.delete(f"/datasets/{v['dataset_id']}"))],
    ("POST", "/datasets/{dataset_id}/items"): [("add items", _upload_to)],
    ("GET", "/datasets/{dataset_id}/items"): [
        ("list", lambda a, v, m: a.get(f"/datasets/{v['dataset_id']}/items")),
        ("review queue", lambda a, v, m: a.get(f"/datasets/{v['dataset_id']}/items?needs_review=true&order=margin")),
    ],
    ("GET", "/datasets/{dataset_id}/labels"): [
        (fmt, lambda a, v, m, fmt=fmt: a.get(f"/datasets/{v['dataset_id']}/labels?format={fmt}"))
        for fmt in ("json", "jsonl", "csv")
    ],
    ("POST", "/datasets/{dataset_id}/jobs"): [
        ("start a job", lambda a, v, m: a.post(f"/datasets/{v['dataset_id']}/jobs", json={"epochs": 1})),
        (
            "replay the victim's Idempotency-Key",
            lambda a, v, m: a.post(
                f"/datasets/{v['dataset_id']}/jobs", json={"epochs": 3}, headers={"Idempotency-Key": v["job_key"]}
            ),
        ),
    ],
    ("POST", "/datasets/{dataset_id}/audits"): [
        ("draw an audit", lambda a, v, m: a.post(f"/datasets/{v['dataset_id']}/audits", json={"size": 1}))
    ],
    ("GET", "/datasets/{dataset_id}/audits/current"): [
        ("read the audit", lambda a, v, m: a.get(f"/datasets/{v['dataset_id']}/audits/current"))
    ],
    ("POST", "/datasets/{dataset_id}/audits/current/answers"): [
        (
            "answer for the victim's item",
            lambda a, v, m: a.post(
                f"/datasets/{v['dataset_id']}/audits/current/answers", json={"item_id": v["item_id"], "label": "dog"}
            ),
        )
    ],
    ("GET", "/datasets/{dataset_id}/refits"): [
        ("the victim's refits", lambda a, v, m: a.get(f"/datasets/{v['dataset_id']}/refits"))
    ],
    ("GET", "/items/{item_id}"): [("read", lambda a, v, m: a.get(f"/items/{v['item_id']}"))],
    ("PATCH", "/items/{item_id}"): [
        ("review", lambda a, v, m: a.patch(f"/items/{v['item_id']}", json={"label": "dog"}))
    ],
    ("GET", "/items/{item_id}/image"): [("image", lambda a, v, m: a.get(f"/items/{v['item_id']}/image"))],
    ("GET", "/jobs"): [("the victim's dataset's jobs", lambda a, v, m: a.get(f"/jobs?dataset_id={v['dataset_id']}"))],
    ("GET", "/models"): [
        ("the victim's dataset's models", lambda a, v, m: a.get(f"/models?dataset_id={v['dataset_id']}"))
    ],
    ("GET", "/jobs/{job_id}"): [("read", lambda a, v, m: a.get(f"/jobs/{v['job_id']}"))],
    ("GET", "/jobs/{job_id}/events"): [("events", lambda a, v, m: a.get(f"/jobs/{v['job_id']}/events?after=0"))],
    ("POST", "/jobs/{job_id}/cancel"): [("cancel", lambda a, v, m: a.post(f"/jobs/{v['job_id']}/cancel"))],
    ("GET", "/models/{model_id}"): [("read", lambda a, v, m: a.get(f"/models/{v['model_id']}"))],
    ("GET", "/models/{model_id}/export"): [("export", lambda a, v, m: a.get(f"/models/{v['model_id']}/export"))],
    ("GET", "/predict"): [
        (
            "victim's model and item",
            lambda a, v, m: a.get("/predict", params={"model_id": v["model_id"], "item_id": v["item_id"]}),
        ),
        (
            "own model, victim's item",
            lambda a, v, m: a.get("/predict", params={"model_id": m["model_id"], "item_id": v["item_id"]}),
        ),
        (
            "victim's model, own item",
            lambda a, v, m: a.get("/predict", params={"model_id": v["model_id"], "item_id": m["item_id"]}),
        ),
    ],
    ("POST", "/predict"): [("victim's model", _predict("victim"))],
    ("GET", "/label-studio/{dataset_id}/health"): [
        ("health", lambda a, v, m: a.get(f"/label-studio/{v['dataset_id']}/health")),
        (
            "health, Basic auth",
            lambda a, v, m: a.client.get(f"/label-studio/{v['dataset_id']}/health", headers=_basic(a)),
        ),
    ],
    ("POST", "/label-studio/{dataset_id}/setup"): [
        ("setup", lambda a, v, m: a.post(f"/label-studio/{v['dataset_id']}/setup", json={"schema": LABEL_CONFIG}))
    ],
    ("POST", "/label-studio/{dataset_id}/predict"): [
        (
            "predict the victim's item",
            lambda a, v, m: a.post(
                f"/label-studio/{v['dataset_id']}/predict",
                json={"tasks": [{"id": 1, "data": {"image": "red.png"}}], "label_config": LABEL_CONFIG},
            ),
        )
    ],
    ("POST", "/label-studio/{dataset_id}/webhook"): [
        (
            "annotate the victim's item",
            lambda a, v, m: a.client.post(
                f"/label-studio/{v['dataset_id']}/webhook",
                headers=_basic(a),
                json={
                    "action": "ANNOTATION_CREATED",
                    "task": {"id": 1, "data": {"image": "red.png"}},
                    "annotation": {"result": [{"type": "choices", "value": {"choices": ["dog"]}}]},
                },
            ),
        ),
        (
            "start training",
            lambda a, v, m: a.post(f"/label-studio/{v['dataset_id']}/webhook", json={"action": "START_TRAINING"}),
        ),
    ],
    ("GET", "/webhooks/{webhook_id}"): [("read", lambda a, v, m: a.get(f"/webhooks/{v['webhook_id']}"))],
    ("DELETE", "/webhooks/{webhook_id}"): [("delete", lambda a, v, m: a.delete(f"/webhooks/{v['webhook_id']}"))],
    ("GET", "/webhooks/{webhook_id}/deliveries"): [
        ("delivery log", lambda a, v, m: a.get(f"/webhooks/{v['webhook_id']}/deliveries"))
    ],
}


def _basic(api: Api) -> dict[str, str]:
    """Label Studio's way: HTTP Basic with the API key as the password."""
    return {"Authorization": "Basic " + base64.b64encode(f"tagsift:{api.key}".encode()).decode()}


def test_the_attack_table_covers_every_route_that_takes_an_id(client) -> None:
    app = client.app
    taking_ids = {
        (method, path)
        for method, path, route in api_operations(app)
        if path not in PUBLIC_PATHS and id_parameters(app, method, path, route)
    }
    assert len(taking_ids) >= 15, taking_ids  # the derivation sees the routes it should
    missing = taking_ids - set(ATTACKS)
    assert not missing, f"routes that take an id but have no tenancy case in ATTACKS: {sorted(missing)}"
    stale = set(ATTACKS) - {(m, p) for m, p, _ in route_table(app)}
    assert not stale, f"ATTACKS names routes the app does not have: {sorted(stale)}"


@pytest.mark.parametrize("direction", ["bob-on-alice", "alice-on-bob"])
def test_another_owner_gets_404_on_every_route_and_changes_nothing(
    alice: Api,
    bob: Api,
    onnx_bytes: bytes,
    direction: str,
) -> None:
    worlds = {"alice": build_world(alice, onnx_bytes), "bob": build_world(bob, onnx_bytes)}
    attacker_name, victim_name = ("bob", "alice") if direction == "bob-on-alice" else ("alice", "bob")
    attacker = bob if attacker_name == "bob" else alice
    victim_api = alice if victim_name == "alice" else bob
    victim, mine = worlds[victim_name], worlds[attacker_name]
    victim_view = _api_view(victim_api, victim)

    failures = []
    for (method, path), attacks in ATTACKS.items():
        for label, attack in attacks:
            before = everything(attacker, victim, mine)
            r = attack(attacker, victim, mine)
            where = f"{method} {path} ({label})"
            if r.status_code != 404 or not r.headers["content-type"].startswith("application/problem+json"):
                failures.append(f"{where}: {r.status_code} {r.text[:200]}")
            elif victim["name"] in r.text or "red.png" in r.text:
                failures.append(f"{where}: the 404 discloses the victim's data: {r.text[:200]}")
            if everything(attacker, victim, mine) != before:
                failures.append(f"{where}: changed stored data")
    assert not failures, "\n".join(failures)

    # The lists show the attacker only their own, and the victim still sees all of theirs exactly as before.
    assert victim["dataset_id"] not in attacker.get("/datasets").text
    assert victim["model_id"] not in attacker.get("/models").text
    assert victim["job_id"] not in attacker.get("/jobs").text
    assert victim["webhook_id"] not in attacker.get("/webhooks").text
    assert _api_view(victim_api, victim) == victim_view


def _api_view(api: Api, ids: dict) -> dict:
    """What the owner reads through the API about their own data (all 200)."""
    urls = [
        f"/datasets/{ids['dataset_id']}",
        f"/datasets/{ids['dataset_id']}/items",
        f"/datasets/{ids['dataset_id']}/labels",
        f"/items/{ids['item_id']}",
        f"/jobs/{ids['job_id']}",
        f"/jobs/{ids['job_id']}/events",
        f"/models/{ids['model_id']}",
        f"/webhooks/{ids['webhook_id']}",
        f"/webhooks/{ids['webhook_id']}/deliveries",
    ]
    view = {}
    for url in urls:
        r = api.get(url)
        assert r.status_code == 200, (url, r.text)
        view[url] = r.json()
    image = api.get(f"/items/{ids['item_id']}/image")
    assert image.status_code == 200
    view["image"] = hashlib.sha256(image.content).hexdigest()
    return view


# --- (a) keys ---------------------------------------------------------------------------------------------


def test_every_route_but_health_and_docs_needs_a_valid_key(alice: Api, onnx_bytes: bytes) -> None:
    app = alice.client.app
    world = build_world(alice, onnx_bytes)
    ops = api_operations(app)
    assert len(ops) >= 20, ops
    before = owner_state(world["owner_id"])
    wrong = [
        {},
        {"Authorization": "Bearer tsk_wrong"},
        {"Authorization": f"Bearer {alice.key[:-1]}{'A' if alice.key[-1] != 'A' else 'B'}"},  # one character off
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {base64.b64encode(f'alice:{alice.key}'.encode()).decode()}"},
        {"Authorization": alice.key},  # no scheme
    ]
    checked = 0
    for method, path, _route in ops:
        if path in PUBLIC_PATHS:
            continue
        url = path.format(**{name: world[name] for name in re.findall(r"{(\w+)}", path)})
        # Label Studio's ML backend routes take the key as an HTTP Basic password too (app.api.routes.label_studio)
        basic_ok = path.startswith("/label-studio/")
        challenge = 'Basic realm="tagsift", Bearer' if basic_ok else "Bearer"
        for headers in wrong:
            if basic_ok and headers.get("Authorization", "").startswith("Basic "):
                headers = {"Authorization": "Basic " + base64.b64encode(b"alice:tsk_wrong").decode()}
            kwargs = {"json": {}} if method in ("POST", "PATCH", "PUT") else {}
            r = alice.client.request(method, url, headers=headers, **kwargs)
            assert r.status_code == 401, (method, url, headers, r.status_code, r.text[:300])
            assert r.headers["www-authenticate"] == challenge
            assert r.headers["content-type"].startswith("application/problem+json")
            checked += 1
    assert checked == len(wrong) * (len(ops) - len(PUBLIC_PATHS))
    assert owner_state(world["owner_id"]) == before  # a DELETE without a key deleted nothing
    # Health and docs answer without a key.
    for path in sorted(PUBLIC_PATHS | docs_paths(app)):
        if path != app.swagger_ui_oauth2_redirect_url:
            assert alice.client.get(path).status_code == 200, path
    assert alice.get(f"/datasets/{world['dataset_id']}").status_code == 200  # and the right key works


# --- (c) keys hashed at rest ------------------------------------------------------------------------------


def test_api_keys_are_stored_hashed(alice: Api, caplog) -> None:
    with session_scope() as session:
        key = create_api_key(session=session, owner_name=f"carol-{uuid.uuid4().hex[:8]}")
    secret = key[12:]  # what follows the stored display prefix
    assert len(secret) >= 32
    caplog.set_level(logging.DEBUG)
    carol = Api(client=alice.client, key=key, settings=alice.settings)
    assert carol.post("/datasets", json={"name": "c", "classes": ["a", "b"]}).status_code == 201
    assert carol.get("/datasets").status_code == 200

    with session_scope() as session:
        stored_hash = session.scalar(select(ApiKey.key_hash).where(ApiKey.prefix == key[:12]))
        assert stored_hash == hashlib.sha256(key.encode()).hexdigest()
        tables = session.scalars(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        ).all()
        assert {"api_keys", "owners", "datasets"} <= set(tables)
        for table in tables:
            dump = "\n".join(session.scalars(text(f'SELECT t::text FROM "{table}" t')).all())
            assert key not in dump and secret not in dump, f"table {table} holds the plaintext key"
            assert alice.key not in dump and alice.key[12:] not in dump, table
    assert key not in caplog.text and secret not in caplog.text
    # A key that is only its stored hash does not authenticate.
    assert alice.client.get("/datasets", headers={"Authorization": f"Bearer {stored_hash}"}).status_code == 401


# --- (d) image URLs are never fetched ---------------------------------------------------------------------


@pytest.fixture
def listener():
    """A TCP socket listening on loopback: any connection to it shows up in its backlog."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_image_urls_are_never_fetched(alice: Api, listener: socket.socket, onnx_bytes: bytes) -> None:
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.jpg"
    ds = alice.make_dataset(1, offset=uuid.uuid4().int % 10**9)
    before = stored(alice)
    csv_manifest = f"file,candidates\n{url},cat\n".encode()
    cases: list[tuple[str, list[Part], str, str]] = [
        (  # a URL as the file, and an uploaded x.jpg whose base name matches it
            "file-is-url",
            upload_parts([{"file": url, "candidates": ["cat"]}], [("x.jpg", image_bytes(5150))]),
            "file",
            "named in the manifest (line 1) but not uploaded: a URL",
        ),
        (
            "https-and-file-urls",
            upload_parts(
                [
                    {"file": f"https://127.0.0.1:{port}/a.png", "candidates": ["cat"]},
                    {"file": "file:///etc/passwd", "candidates": ["cat"]},
                ],
                [],
            ),
            "file",
            "but not uploaded: a URL",
        ),
        (
            "image-url-key",
            upload_parts([{"file": "y.png", "image_url": url, "candidates": ["cat"]}], []),
            "manifest",
            "unknown key(s) 'image_url'",
        ),
        ("image-url-only", upload_parts([{"image_url": url, "candidates": ["cat"]}], []), "file", "`file` must be"),
        ("csv-url", [("manifest", csv_manifest, "m.csv")], "file", "but not uploaded: a URL"),
        (
            "csv-url-column",
            [("manifest", f"file,candidates,image_url\ny.png,cat,{url}\n".encode(), "m.csv")],
            "manifest",
            "unknown column(s) 'image_url'",
        ),
        ("form-field", [("image_url", url.encode(), None)], "image_url", "unknown form field"),
        ("images-as-text", [("images", url.encode(), None)], "images", "each part must be a file"),
    ]
    for name, parts, field, needle in cases:
        for target in (f"/datasets/{ds['id']}/items", "/datasets"):
            body = [("name", b"urls", None), *parts] if target == "/datasets" else parts
            r = post_parts(alice, target, body)
            assert r.status_code == 422, (name, target, r.text)
            errors = r.json()["errors"]
            assert any(e["field"] == field and needle in e["message"] for e in errors), (name, target, errors)
    # JSON bodies and predict: an image_url is an unknown field too.
    r = alice.post("/datasets", json={"name": "u", "classes": ["cat"], "image_url": url})
    assert r.status_code == 422 and "image_url" in r.text
    item = alice.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    assert alice.patch(f"/items/{item['id']}", json={"label": "cat", "image_url": url}).status_code == 422
    model_id = build_world(alice, onnx_bytes)["model_id"]
    before = stored(alice)
    for extra in ([("image_url", url.encode(), None)], [("image", url.encode(), None)]):
        r = post_parts(alice, "/predict", [("model_id", model_id.encode(), None), *extra])
        assert r.status_code == 422, r.text
    assert connections(listener) == 0, "the service connected to the URL"
    assert stored(alice) == before


# --- (e) file names never become paths --------------------------------------------------------------------


def _fs_snapshot(paths: list[Path]) -> dict[str, object]:
    """Per path: None (absent), "dir", or a file's (size, mtime, sha256)."""
    out: dict[str, object] = {}
    for p in paths:
        if p.is_dir():
            out[str(p)] = "dir"
        elif p.is_file():
            out[str(p)] = (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p)] = None
    return out


def test_uploaded_file_names_never_become_paths(alice: Api, tmp_path: Path, onnx_bytes: bytes) -> None:
    token = f"escape{uuid.uuid4().hex[:8]}"
    hostile = [
        "../../etc/passwd",
        f"../../../../{token}-up.png",
        "/abs/path.jpg",
        f"/tmp/{token}/abs.jpg",
        "a\\b.jpg",
        f"..\\..\\{token}-win.png",
        f"{token}/../../../x.png",
        "..",
        "C:\\evil\\drive.jpg",
    ]
    data_dir = alice.settings.data_dir
    # Where each name would land if it were used as a path, from every directory the service works in.
    bases = [data_dir, data_dir / "blobs", data_dir / "blobs" / "zz" / "zz", data_dir / "tmp", Path.cwd(), Path("/")]
    watched = [Path("/etc/passwd")]
    for name in hostile:
        for variant in {name, name.replace("\\", "/"), name.replace("\\", "/").lstrip("/")}:
            watched += [Path(os.path.normpath(base / variant)) for base in bases]
    ds = alice.make_dataset(1, offset=uuid.uuid4().int % 10**9)  # (creates the data dir)
    fs_before = _fs_snapshot(watched)
    images = {name: image_bytes(7000 + i) for i, name in enumerate(hostile)}
    # The manifest names each file as the client sent it; parts go out with the raw names (no escaping by httpx).
    rows = [{"file": name, "candidates": ["cat"]} for name in hostile]
    r = post_parts(alice, f"/datasets/{ds['id']}/items", upload_parts(rows, list(images.items())))
    assert r.status_code == 201, r.text
    assert r.json()["added"] == len(hostile)
    files = {i["file"] for i in alice.get(f"/datasets/{ds['id']}/items?limit=100").json()["data"]}
    assert {"../../etc/passwd", "abs/path.jpg", "a/b.jpg", "C:/evil/drive.jpg"} <= files  # display names only

    # A NUL or another control character in a name is refused, naming the file; nothing stored.
    before = stored(alice)
    for bad in ("a\0b.jpg", "new\nline.jpg"):
        parts = upload_parts([{"file": "ok.png", "candidates": ["cat"]}], [("ok.png", image_bytes(7100)), (bad, RED)])
        r = post_parts(alice, f"/datasets/{ds['id']}/items", parts)
        assert r.status_code == 422, r.text
        assert any(e["field"] == "images" and "control character" in e["message"] for e in r.json()["errors"])
    assert stored(alice) == before
    # Zip members and /predict images with the same names.
    archive = _zip({name.replace("\\", "/").lstrip("/"): image_bytes(7200 + i) for i, name in enumerate(hostile[4:])})
    manifest = jsonl([{"file": "z.png", "candidates": ["cat"]}])
    r = post_parts(
        alice, f"/datasets/{ds['id']}/items", [("manifest", manifest, "m.jsonl"), ("archive", archive, "z.zip")]
    )
    assert r.status_code == 422 and all(e["field"] in ("archive", "images", "manifest") for e in r.json()["errors"])
    model_id = build_world(alice, onnx_bytes)["model_id"]
    before = stored(alice)
    parts: list[Part] = [("model_id", model_id.encode(), None), *(("image", RED, name) for name in hostile)]
    r = post_parts(alice, "/predict", parts)
    assert r.status_code == 200, r.text
    assert stored(alice) == before

    # On disk: every file under the data dir is a blob at its own content address; nothing anywhere else.
    for path in data_dir.rglob("*"):
        if path.is_file():
            rel = path.relative_to(data_dir).parts
            assert rel[0] == "blobs" and len(rel) == 4, rel
            assert rel[3] == hashlib.sha256(path.read_bytes()).hexdigest() and rel[1:3] == (rel[3][:2], rel[3][2:4])
    assert sorted(os.listdir(tmp_path)) == [data_dir.name]
    assert not [p for p in tmp_path.parent.rglob(f"*{token}*")], "a hostile name became a path"
    assert not Path(f"/{token}-up.png").exists() and not (Path.cwd() / f"{token}-up.png").exists()
    assert _fs_snapshot(watched) == fs_before


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()
