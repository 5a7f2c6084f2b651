"""The web app without a browser: sign in and out, cookies, CSRF, security headers, owner isolation, inert names,
review decisions with their history and undo, thumbnails, uploads with per-item errors, offline docs."""

from __future__ import annotations

import io
import json
import re
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from app.db import session_scope
from app.main import create_app
from app.models import Item, ItemReview, WebSession
from app.services.api_keys import create_api_key
from app.services.datasets import refresh_review_count
from tests.app.conftest import Api, image_bytes, jsonl

XSS = '<img src=x onerror="window.__xss=1">'
SCRIPT_END = "</script><script>window.__xss=2</script>"
FILE_XSS = "<img src=x onerror=window.__xss=3>"  # no double quote: multipart encodes it in file names


def named_key(owner: str, name: str | None) -> str:
    with session_scope() as session:
        return create_api_key(session=session, owner_name=owner, name=name)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no csrf_token field in the page"
    return m.group(1)


def sign_in(client: TestClient, key: str) -> str:
    """Sign in through the form; returns the session's CSRF token (from the next page's forms)."""
    page = client.get("/ui/login")
    r = client.post(
        "/ui/login",
        data={"api_key": key, "csrf_token": csrf_of(page.text), "next": "/ui/datasets"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    datasets = client.get("/ui/datasets")
    assert datasets.status_code == 200
    return csrf_of(datasets.text)


@pytest.fixture
def web(prod_env) -> TestClient:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def other_web(prod_env) -> TestClient:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def _dataset(api: Api, n: int = 4, name: str | None = None, tags=("cat", "lynx", "dog")) -> dict:
    tags = list(tags)
    rows = [{"file": f"img{i}.png", "candidates": [tags[i % 3], tags[(i + 1) % 3]]} for i in range(n)]
    images = {f"img{i}.png": image_bytes(i, size=(64, 48)) for i in range(n)}
    r = api.upload("/datasets", rows, images, name=name or f"ds-{uuid.uuid4().hex[:6]}", classes=tags)
    assert r.status_code == 201, r.text
    return r.json()


def _items(dataset_id: str) -> list[Item]:
    with session_scope() as session:
        return list(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)))


def _set_model_tags(dataset_id: str) -> None:
    """As a finished job leaves them: a model tag, its probabilities, needs_review on all."""
    with session_scope() as session:
        for item in session.scalars(select(Item).where(Item.dataset_id == dataset_id)):
            a, b = item.candidates
            item.label, item.label_source, item.model_id = a, "model", "m" * 32
            item.confidence, item.margin, item.needs_review = 0.55, 0.1, True
            item.probs = {a: 0.55, b: 0.45}
        session.flush()
        refresh_review_count(session, dataset_id)  # as the job's save does


def test_root_and_pages_redirect_to_sign_in(web: TestClient) -> None:
    r = web.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/datasets"
    r = web.get("/ui/datasets", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert web.post("/ui/api/review", json={"items": ["x"], "action": "accept"}).status_code == 401


def test_security_headers_on_pages_api_and_docs(web: TestClient) -> None:
    for path in ("/ui/login", "/healthz", "/docs", "/redoc", "/ui/static/app.js", "/datasets"):
        r = web.get(path)
        csp = r.headers["content-security-policy"]
        directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
        assert directives["script-src"] == ["'self'"], path
        assert "'unsafe-inline'" not in directives["script-src"] and "'unsafe-eval'" not in directives["script-src"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


def test_docs_load_only_vendored_assets(web: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        html = web.get(path).text
        assert "http://" not in html and "https://" not in html and "<script>" not in html
        for src in re.findall(r'(?:src|href)="([^"]+)"', html):
            if src.startswith("data:"):
                continue
            assert src.startswith("/ui/static/"), src
            assert web.get(src).status_code == 200, src


def test_sign_in_sets_a_strict_cookie_and_sign_out_ends_the_session(web: TestClient, prod_env) -> None:
    key = named_key(f"team-{uuid.uuid4().hex[:6]}", "Ada")
    page = web.get("/ui/login")
    bad = web.post("/ui/login", data={"api_key": "tsk_wrong", "csrf_token": csrf_of(page.text)})
    assert bad.status_code == 401 and "not valid" in bad.text
    page = web.get("/ui/login")
    r = web.post("/ui/login", data={"api_key": key, "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("tagsift_session="))
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower() and "secure" not in cookie.lower()
    page = web.get("/ui/datasets")
    assert "Ada" in page.text
    csrf = csrf_of(page.text)
    assert web.post("/ui/logout", data={}, follow_redirects=False).status_code == 403  # no token
    r = web.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert web.get("/ui/datasets", follow_redirects=False).status_code == 303
    with session_scope() as session:
        assert session.scalar(select(WebSession.id).where(WebSession.csrf_token == csrf)) is None


def test_cookie_is_secure_over_https(prod_env) -> None:
    key = named_key(f"team-{uuid.uuid4().hex[:6]}", "Bea")
    with TestClient(create_app(), base_url="https://testserver") as c:
        page = c.get("/ui/login")
        r = c.post("/ui/login", data={"api_key": key, "csrf_token": csrf_of(page.text)}, follow_redirects=False)
        cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "tagsift_session=" in v)
        assert "secure" in cookie.lower()


def test_login_without_its_csrf_cookie_is_refused(web: TestClient, prod_env) -> None:
    key = named_key(f"team-{uuid.uuid4().hex[:6]}", None)
    r = web.post("/ui/login", data={"api_key": key, "csrf_token": "forged"}, follow_redirects=False)
    assert r.status_code == 403 and "tagsift_session" not in r.headers.get("set-cookie", "")


def test_cross_site_posts_are_refused(web: TestClient, alice: Api) -> None:
    ds = _dataset(alice)
    _set_model_tags(ds["id"])
    csrf = sign_in(web, alice.key)
    item = _items(ds["id"])[0]
    body = {"items": [item.id], "action": "accept"}
    assert web.post("/ui/api/review", json=body).status_code == 403  # no token
    assert web.post("/ui/api/review", json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    evil = {"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    assert web.post("/ui/api/review", json=body, headers=evil).status_code == 403
    site = {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    assert web.post("/ui/api/review", json=body, headers=site).status_code == 403
    r = web.post(f"/ui/datasets/{ds['id']}/delete", data={}, follow_redirects=False)  # a form without the token
    assert r.status_code == 403
    assert _items(ds["id"])[0].label_source == "model"  # nothing changed
    ok = web.post("/ui/api/review", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://testserver"})
    assert ok.status_code == 200, ok.text


def test_another_owners_pages_and_thumbnails_are_404(web: TestClient, other_web: TestClient, alice: Api) -> None:
    ds = _dataset(alice)
    item = _items(ds["id"])[0]
    sign_in(web, alice.key)
    csrf_bob = sign_in(other_web, named_key(f"bob-{uuid.uuid4().hex[:6]}", "Bob"))
    for path in (
        f"/ui/datasets/{ds['id']}",
        f"/ui/datasets/{ds['id']}/review",
        f"/ui/datasets/{ds['id']}/delete",
        f"/ui/items/{item.id}",
        f"/ui/thumbs/{item.id}/160",
    ):
        assert web.get(path).status_code == 200, path
        assert other_web.get(path).status_code == 404, path
    h = {"X-CSRF-Token": csrf_bob}
    assert (
        other_web.post(
            "/ui/api/review", json={"items": [item.id], "action": "assign", "label": "cat"}, headers=h
        ).status_code
        == 404
    )
    assert other_web.post(f"/ui/api/items/{item.id}/undo", headers=h).status_code == 404
    r = other_web.post(f"/ui/datasets/{ds['id']}/delete", data={"csrf_token": csrf_bob}, follow_redirects=False)
    assert r.status_code == 404
    assert len(_items(ds["id"])) == 4


def test_html_in_names_renders_escaped(web: TestClient, alice: Api) -> None:
    tags = [XSS, SCRIPT_END, "dog"]
    rows = [{"file": f"{FILE_XSS}{i}.png", "candidates": [tags[i % 3], tags[(i + 1) % 3]]} for i in range(3)]
    images = {f"{FILE_XSS}{i}.png": image_bytes(100 + i) for i in range(3)}
    r = alice.upload("/datasets", rows, images, name=f"{XSS}{SCRIPT_END}", classes=tags)
    assert r.status_code == 201, r.text
    ds = r.json()
    _set_model_tags(ds["id"])
    sign_in(web, alice.key)
    item = _items(ds["id"])[0]
    for path in ("/ui/datasets", f"/ui/datasets/{ds['id']}", f"/ui/datasets/{ds['id']}/review", f"/ui/items/{item.id}"):
        html = web.get(path).text
        assert "<img src=x" not in html and "<script>window.__xss" not in html, path
        if "review" in path or "items" in path:
            assert "&lt;img src=x onerror=window.__xss=3&gt;" in html, path
        assert "&lt;img src=x" in html or "\\u003cimg" in html, path


def test_review_decisions_record_who_when_previous_and_undo_restores(web: TestClient, alice: Api) -> None:
    key = named_key(f"team-{uuid.uuid4().hex[:6]}", "Grace")
    api = Api(client=alice.client, key=key, settings=alice.settings)
    ds = _dataset(api, n=3)
    _set_model_tags(ds["id"])
    csrf = sign_in(web, key)
    a, b, c = _items(ds["id"])
    h = {"X-CSRF-Token": csrf}
    outside = next(t for t in ["cat", "lynx", "dog"] if t not in a.candidates)
    r = web.post("/ui/api/review", json={"items": [a.id], "action": "assign", "label": outside}, headers=h)
    assert r.status_code == 200 and r.json() == {"items": [], "skipped": [a.id]}  # never outside the candidates
    other = next(t for t in a.candidates if t != a.label)
    r = web.post("/ui/api/review", json={"items": [a.id], "action": "assign", "label": other}, headers=h)
    assert r.status_code == 200 and r.json()["items"][0]["label"] == other and r.json()["skipped"] == []
    r = web.post("/ui/api/review", json={"items": [b.id, c.id], "action": "accept"}, headers=h)
    assert [s["label_source"] for s in r.json()["items"]] == ["reviewer", "reviewer"]
    bad = web.post("/ui/api/review", json={"items": [a.id], "action": "assign", "label": "zebra"}, headers=h)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "label"
    with session_scope() as session:
        rev = session.scalars(select(ItemReview).where(ItemReview.item_id == a.id)).one()
        assert (rev.reviewer, rev.action, rev.label) == ("Grace", "assign", other)
        assert (rev.previous_label, rev.previous_source, rev.previous_model_id) == (a.label, "model", "m" * 32)
        assert rev.created_at is not None
    page = web.get(f"/ui/items/{a.id}").text
    assert "Grace" in page and "assign" in page
    r = web.post(f"/ui/api/items/{a.id}/undo", headers=h)
    assert r.status_code == 200 and r.json()["label"] == a.label and r.json()["label_source"] == "model"
    restored = next(i for i in _items(ds["id"]) if i.id == a.id)
    assert (restored.label, restored.needs_review, restored.model_id, restored.candidates) == (
        a.label,
        True,
        "m" * 32,
        a.candidates,
    )
    assert web.post(f"/ui/api/items/{a.id}/undo", headers=h).status_code == 409  # nothing left to undo
    # undo from the item's history page (a form)
    r = web.post(f"/ui/items/{b.id}/undo", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert next(i for i in _items(ds["id"]) if i.id == b.id).label_source == "model"


def test_patch_items_records_the_keys_name(alice: Api) -> None:
    key = named_key(f"team-{uuid.uuid4().hex[:6]}", "Linus")
    api = Api(client=alice.client, key=key, settings=alice.settings)
    ds = _dataset(api, n=1)
    item = _items(ds["id"])[0]
    r = api.patch(f"/items/{item.id}", json={"label": "lynx"})
    assert r.status_code == 200, r.text
    with session_scope() as session:
        rev = session.scalars(select(ItemReview).where(ItemReview.item_id == item.id)).one()
        assert (rev.reviewer, rev.action, rev.label, rev.previous_label) == ("Linus", "assign", "lynx", None)


def test_thumbnails_are_small_cached_and_revalidated(web: TestClient, alice: Api) -> None:
    ds = _dataset(alice, n=1)
    item = _items(ds["id"])[0]
    sign_in(web, alice.key)
    big = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 200, 30)).save(big, format="PNG")
    r = alice.post(
        f"/datasets/{ds['id']}/items",
        files=[
            (
                "manifest",
                ("m.jsonl", jsonl([{"file": "big.png", "candidates": ["cat", "dog"]}]), "application/x-ndjson"),
            ),
            ("images", ("big.png", big.getvalue(), "image/png")),
        ],
    )
    assert r.status_code == 201, r.text
    big_item = next(i for i in _items(ds["id"]) if i.file == "big.png")
    r = web.get(f"/ui/thumbs/{big_item.id}/160")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) == 160
    assert "max-age=31536000" in r.headers["cache-control"] and r.headers["etag"]
    again = web.get(f"/ui/thumbs/{big_item.id}/160", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert web.get(f"/ui/thumbs/{item.id}/999").status_code == 404


def test_upload_form_gives_the_apis_per_item_errors(web: TestClient, alice: Api) -> None:
    csrf = sign_in(web, alice.key)
    rows = [{"file": "a.png", "candidates": ["cat", "dog"]}, {"file": "missing.png", "candidates": ["cat"]}]
    files = [
        ("manifest", ("m.jsonl", jsonl(rows), "application/x-ndjson")),
        ("images", ("a.png", image_bytes(1), "image/png")),
    ]
    data = {"name": "bad", "classes": json.dumps(["cat", "dog"])}
    ui = web.post("/ui/api/datasets", data=data, files=files, headers={"X-CSRF-Token": csrf})
    api = alice.post("/datasets", data=data, files=files)
    assert ui.status_code == api.status_code == 422
    assert ui.json()["errors"] == api.json()["errors"]
    assert any(e.get("item") == "missing.png" for e in ui.json()["errors"])
    ok = web.post(
        "/ui/api/datasets",
        data=data,
        files=[("manifest", ("m.jsonl", jsonl(rows[:1]), "application/x-ndjson")), files[1]],
        headers={"X-CSRF-Token": csrf},
    )
    assert ok.status_code == 201 and ok.json()["added"] == 1


def test_start_job_form_validates_and_creates(web: TestClient, alice: Api) -> None:
    ds = _dataset(alice, n=3)
    csrf = sign_in(web, alice.key)
    page = web.get(f"/ui/datasets/{ds['id']}").text
    assert "prompt_alignment" in page and "items per class" in page  # defaults explained
    bad = web.post(f"/ui/datasets/{ds['id']}/jobs", data={"csrf_token": csrf, "method": "auto", "epochs": "0"})
    assert bad.status_code == 422 and "epochs" in bad.text
    r = web.post(
        f"/ui/datasets/{ds['id']}/jobs",
        data={
            "csrf_token": csrf,
            "method": "zero_shot",
            "epochs": "1",
            "batch_size": "32",
            "seed": "0",
            "lr": "",
            "shots": "",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/jobs/"), re.findall(r"<li>(.*?)</li>", r.text)
    job_page = web.get(r.headers["location"])
    assert job_page.status_code == 200 and "queued" in job_page.text
    progress = web.get("/ui/api/jobs/" + r.headers["location"].rsplit("/", 1)[1]).json()
    assert progress["job"]["status"] == "queued" and progress["events"][0]["data"]["stage"] == "queued"


def test_delete_dataset_after_confirm(web: TestClient, alice: Api) -> None:
    ds = _dataset(alice, n=2)
    csrf = sign_in(web, alice.key)
    confirm = web.get(f"/ui/datasets/{ds['id']}/delete")
    assert "cannot be undone" in confirm.text
    r = web.post(f"/ui/datasets/{ds['id']}/delete", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert alice.get(f"/datasets/{ds['id']}").status_code == 404


def test_api_key_name_is_stored(prod_env) -> None:
    from app.models import ApiKey

    key = named_key(f"team-{uuid.uuid4().hex[:6]}", "  Marie  ")
    with session_scope() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.prefix == key[:12])).one()
        assert row.name == "Marie"
    with pytest.raises(ValueError, match="name"):
        named_key("team-x", "n" * 201)


def test_quality_report_shows_on_the_job_and_the_datasets_list(web: TestClient, alice: Api) -> None:
    from app.models import Job

    ds = _dataset(alice, n=2)
    sign_in(web, alice.key)
    with session_scope() as session:
        owner_id = session.get(Item, _items(ds["id"])[0].id).dataset.owner_id
        job = Job(
            owner_id=owner_id,
            dataset_id=ds["id"],
            status="succeeded",
            params={"method": "coop"},
            progress={"stage": "succeeded"},
            metrics={"quality": {"estimated_accuracy": 0.875, "method": "held-out agreement"}},
        )
        session.add(job)
        session.flush()
        job_id = job.id
    assert "87.5 %" in web.get("/ui/datasets").text
    page = web.get(f"/ui/jobs/{job_id}").text
    assert "Label quality" in page and "87.5 %" in page and "not yet measured" in page
    assert "{&#39;" not in page and "held-out agreement" not in page  # words, not the report's dict
    assert web.get(f"/ui/api/jobs/{job_id}").json()["job"]["quality"]["estimated_accuracy"] == 0.875


def test_bulk_assign_is_all_or_nothing(web: TestClient, alice: Api, bob: Api) -> None:
    ds = _dataset(alice, n=3)
    theirs = _items(_dataset(bob, n=1)["id"])[0]
    csrf = sign_in(web, alice.key)
    ids = [i.id for i in _items(ds["id"])]
    h = {"X-CSRF-Token": csrf}
    r = web.post("/ui/api/review", json={"items": [*ids, theirs.id], "action": "assign", "label": "dog"}, headers=h)
    assert r.status_code == 404  # one item is another owner's: nothing is stored
    assert all(i.label is None for i in _items(ds["id"]))
    r = web.post("/ui/api/review", json={"items": ids, "action": "assign", "label": "dog"}, headers=h)
    holding = [i.id for i in _items(ds["id"]) if "dog" in i.candidates]
    assert 0 < len(holding) < len(ids)  # the bulk assign applies only to the items whose candidates hold the tag
    assert r.status_code == 200 and [s["id"] for s in r.json()["items"]] == [i for i in ids if i in holding]
    assert sorted(r.json()["skipped"]) == sorted(set(ids) - set(holding))
    rows = _items(ds["id"])
    assert all((i.label == "dog") == (i.id in holding) and ("dog" in i.candidates) == (i.id in holding) for i in rows)
    r = web.post("/ui/api/review", json={"items": holding[:1], "action": "accept"}, headers=h)
    assert r.status_code == 200  # accepting a reviewer's tag again is allowed (it stays)
    fresh = _items(_dataset(alice, n=1)["id"])[0]
    r = web.post("/ui/api/review", json={"items": [fresh.id], "action": "accept"}, headers=h)
    assert r.status_code == 409 and r.json()["code"] == "nothing_to_accept"


def test_every_web_route_with_an_id_is_404_for_another_owner(
    web: TestClient, other_web: TestClient, alice: Api, onnx_bytes: bytes
) -> None:
    """Table-driven like tests/app/test_tenancy.py: a new /ui route that takes an id fails here until it has a case."""
    from tests.app.model_fixtures import store_model
    from tests.app.test_tenancy import route_table

    ds = _dataset(alice, n=2)
    item = _items(ds["id"])[0]
    job = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 1}).json()
    ids = {
        "dataset_id": ds["id"],
        "item_id": item.id,
        "job_id": job["id"],
        "model_id": store_model(ds["id"], onnx_bytes),
    }
    ids["size"] = "160"
    sign_in(web, alice.key)
    csrf = sign_in(other_web, named_key(f"mallory-{uuid.uuid4().hex[:6]}", "Mallory"))
    upload = [("manifest", ("m.jsonl", jsonl([{"file": "x.png", "candidates": ["cat"]}]), "application/x-ndjson"))]
    upload.append(("images", ("x.png", image_bytes(999), "image/png")))
    bodies = {
        ("POST", "/ui/datasets/{dataset_id}/jobs"): {"data": {"csrf_token": csrf, "epochs": "1"}},
        ("POST", "/ui/datasets/{dataset_id}/delete"): {"data": {"csrf_token": csrf}},
        ("POST", "/ui/jobs/{job_id}/cancel"): {"data": {"csrf_token": csrf}},
        ("POST", "/ui/items/{item_id}/undo"): {"data": {"csrf_token": csrf}},
        ("POST", "/ui/items/{item_id}/decide"): {"data": {"csrf_token": csrf, "label": "cat"}},
        ("POST", "/ui/api/items/{item_id}/undo"): {"headers": {"X-CSRF-Token": csrf}},
        ("POST", "/ui/api/items/{item_id}/skip"): {"headers": {"X-CSRF-Token": csrf}},
        ("POST", "/ui/api/datasets/{dataset_id}/items"): {"files": upload, "headers": {"X-CSRF-Token": csrf}},
        ("POST", "/ui/datasets/{dataset_id}/audit"): {"data": {"csrf_token": csrf, "size": "1"}},
        ("POST", "/ui/datasets/{dataset_id}/audit/answer"): {
            "data": {"csrf_token": csrf, "item_id": item.id, "label": "cat"}
        },
        ("POST", "/ui/datasets/{dataset_id}/audit/undo"): {"data": {"csrf_token": csrf, "item_id": item.id}},
    }
    routes = sorted({(m, p) for m, p, _ in route_table(web.app) if p.startswith("/ui/") and "{" in p})
    assert len(routes) >= 12, routes
    failures = []
    for method, path in routes:
        url = path.format(**ids)
        if method == "GET":
            mine = web.get(url)
            if mine.status_code != 200:
                failures.append(f"{method} {path}: the owner gets {mine.status_code}")
        elif (method, path) not in bodies:
            failures.append(f"{method} {path}: no case in this test")
            continue
        r = other_web.request(method, url, follow_redirects=False, **bodies.get((method, path), {}))
        if r.status_code != 404:
            failures.append(f"{method} {path}: {r.status_code} for another owner")
    assert not failures, "\n".join(failures)
    assert len(_items(ds["id"])) == 2 and alice.get(f"/jobs/{job['id']}").json()["status"] == "queued"


def test_models_page_lists_models_newest_first_with_their_export(web: TestClient, alice: Api) -> None:
    from tests.app.model_fixtures import channel_classifier_onnx, store_model

    ds = _dataset(alice, n=1)
    assert alice.post(f"/datasets/{ds['id']}/jobs", json={"method": "zero_shot"}).status_code == 202
    older = store_model(ds["id"], channel_classifier_onnx())
    newer = store_model(ds["id"], channel_classifier_onnx())
    sign_in(web, alice.key)
    page = web.get("/ui/models")
    assert page.status_code == 200, page.text
    assert page.text.index(f"/ui/models/{newer}/export") < page.text.index(f"/ui/models/{older}/export")
    export = web.get(f"/ui/models/{newer}/export")
    assert export.status_code == 200 and export.headers["content-type"] == "application/zip"
    assert export.content[:2] == b"PK"


# (file, candidates, model tag or None, model "1"/"2", its probabilities, confidence, margin, needs review): the
# scores are the probabilities' top one and top-minus-second, chosen so that the margin and confidence orders differ
# (items 0 and 1 swap) and so that items 2 and 5 tie on both (upload order breaks the tie).
REVIEW_ROWS = [
    ("r0.png", ["cat", "dog", "lynx"], "cat", "1", {"cat": 0.50, "dog": 0.46, "lynx": 0.04}, 0.50, 0.04, True),
    ("r1.png", ["lynx", "cat", "dog"], "lynx", "2", {"lynx": 0.40, "cat": 0.30, "dog": 0.30}, 0.40, 0.10, True),
    ("r2.png", ["dog", "cat"], "dog", "1", {"dog": 0.60, "cat": 0.40}, 0.60, 0.20, True),
    ("r3.png", ["cat", "dog", "lynx"], "cat", "2", {"cat": 0.34, "dog": 0.33, "lynx": 0.33}, 0.34, 0.01, True),
    ("r4.png", ["dog", "cat"], "dog", "1", {"dog": 0.97, "cat": 0.03}, 0.97, 0.94, False),
    ("r5.png", ["cat", "lynx"], "cat", "1", {"cat": 0.60, "lynx": 0.40}, 0.60, 0.20, True),
    ("r6.png", ["lynx", "dog"], "lynx", "2", {"lynx": 0.55, "dog": 0.45}, 0.55, 0.10, True),  # a reviewer: dog
    ("r7.png", ["cat", "dog"], "cat", "2", {"cat": 0.70, "dog": 0.30}, 0.70, 0.40, True),  # a reviewer accepts
    ("r8.png", ["dog", "lynx"], None, None, None, None, None, False),  # no job tagged it yet
]


def test_review_grid_filters_and_sorts(web: TestClient, alice: Api, onnx_bytes: bytes) -> None:
    """Every filter and sort the review page offers, each checked for exactly which items come back in what order."""
    from tests.app.model_fixtures import store_model

    rows = [{"file": f, "candidates": c} for f, c, *_ in REVIEW_ROWS]
    images = {f: image_bytes(300 + k, size=(40, 30)) for k, (f, *_) in enumerate(REVIEW_ROWS)}
    r = alice.upload("/datasets", rows, images, name="filters", classes=["cat", "lynx", "dog"])
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    assert alice.post(f"/datasets/{ds}/jobs", json={"method": "zero_shot"}).status_code == 202
    models = {"1": store_model(ds, onnx_bytes), "2": store_model(ds, onnx_bytes)}
    with session_scope() as session:
        for item in session.scalars(select(Item).where(Item.dataset_id == ds)):
            _, _, tag, m, probs, conf, margin, needs = next(row for row in REVIEW_ROWS if row[0] == item.file)
            item.label, item.probs, item.confidence, item.margin, item.needs_review = tag, probs, conf, margin, needs
            item.label_source, item.model_id = ("model", models[m]) if tag else (None, None)
        session.flush()
        refresh_review_count(session, ds)
    ids = [i.id for i in _items(ds)]  # ids[k] is REVIEW_ROWS[k]
    csrf = sign_in(web, alice.key)
    h = {"X-CSRF-Token": csrf}
    assert web.post(
        "/ui/api/review", json={"items": [ids[6]], "action": "assign", "label": "dog"}, headers=h
    ).is_success
    assert web.post("/ui/api/review", json={"items": [ids[7]], "action": "accept"}, headers=h).is_success

    def grid(**query: str) -> list[int]:
        page = web.get(f"/ui/datasets/{ds}/review", params=query)
        assert page.status_code == 200, (query, page.text[:500])
        shown = re.findall(r'<li class="card[^"]*"[^>]*\sdata-id="([0-9a-f]{32})"', page.text)
        total = int(re.search(r"showing (\d+) of (\d+)", page.text).group(2))
        assert total == len(shown), query
        return [ids.index(i) for i in shown]

    # the default: what needs review, the most doubtful (smallest margin) first
    assert grid() == grid(needs_review="yes", sort="margin") == [3, 0, 1, 2, 5]
    assert grid(sort="confidence") == [3, 1, 0, 2, 5]
    # decided items (a reviewer's tag is certain: confidence and margin 1) after the confident model tag, untagged last
    assert grid(needs_review="no") == [4, 6, 7, 8]
    assert grid(needs_review="all") == [3, 0, 1, 2, 5, 4, 6, 7, 8]
    assert grid(needs_review="all", sort="confidence") == [3, 1, 0, 2, 5, 4, 6, 7, 8]
    # tag: the item's current tag (the reviewer's where one decided)
    assert grid(needs_review="all", tag="cat") == [3, 0, 5, 7]
    assert grid(needs_review="all", tag="dog") == [2, 4, 6]
    assert grid(tag="dog") == [2]
    assert grid(needs_review="all", tag="lynx", sort="confidence") == [1]
    # who tagged it
    assert grid(needs_review="all", source="model") == [3, 0, 1, 2, 5, 4]
    assert grid(needs_review="all", source="reviewer") == [6, 7]
    assert grid(needs_review="all", source="none") == [8]
    assert grid(source="reviewer") == []
    # the model whose tag the item carries (a reviewer's decision replaced model 2's tag on items 6 and 7)
    assert grid(needs_review="all", model=models["1"]) == [0, 2, 5, 4]
    assert grid(needs_review="all", model=models["2"], sort="confidence") == [3, 1]
    assert grid(needs_review="all", model="0" * 32) == []
    # filters combine
    assert grid(needs_review="all", tag="cat", model=models["1"], sort="confidence") == [0, 5]
    assert grid(tag="cat", source="model", model=models["2"]) == [3]
    # the page offers these choices, and shows the ones applied
    page = web.get(f"/ui/datasets/{ds}/review", params={"tag": "dog", "model": models["2"], "sort": "confidence"}).text
    for m in models.values():
        assert f'<option value="{m}"' in page
    assert f'<option value="{models["2"]}" selected>' in page
    assert '<option value="dog" selected>' in page and '<option value="confidence" selected>' in page
    assert "Nothing matches these filters" in web.get(f"/ui/datasets/{ds}/review", params={"source": "reviewer"}).text
    for bad in ({"sort": "random"}, {"needs_review": "maybe"}, {"source": "anyone"}):
        assert web.get(f"/ui/datasets/{ds}/review", params=bad).status_code == 422, bad
