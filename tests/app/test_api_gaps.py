"""The gaps a new user hit (issue 16, item 6): GET /jobs, a page with a total on every list, labels naming their
model and job, hand-made cursors, whitespace in tags, inferred classes sorted, classes added with items."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import Item
from app.services.datasets import refresh_review_count
from tests.app.conftest import Api, image_bytes
from tests.app.model_fixtures import channel_classifier_onnx, store_model
from tests.app.test_fuzz import _drop_queue


def _walk(api: Api, url: str, limit: int, **params) -> tuple[list[str], list[int], int]:
    """Every page of a list: (ids in order, the total of each page, pages)."""
    ids, totals, cursor, pages = [], [], None, 0
    while True:
        r = api.get(url, params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        ids += [row["id"] for row in page["data"]]
        totals.append(page["total"])
        pages += 1
        if not (cursor := page["next_cursor"]):
            return ids, totals, pages


def _cursor(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_datasets_models_and_jobs_page_with_a_total(alice: Api, bob: Api) -> None:
    made = [alice.post("/datasets", json={"name": f"d{i}", "classes": ["a", "b"]}).json()["id"] for i in range(4)]
    bob.post("/datasets", json={"name": "bob's", "classes": ["a", "b"]})
    ds = alice.make_dataset(3)
    ids, totals, pages = _walk(alice, "/datasets", 2)
    assert ids == [*made, ds["id"]] and totals == [5, 5, 5] and pages == 3  # oldest first, bob's not listed
    first = alice.get("/datasets", params={"limit": 1}).json()
    assert first["data"][0]["item_count"] == 0 and first["total"] == 5
    assert alice.get("/datasets", params={"cursor": first["next_cursor"]}).json()["data"][-1]["item_count"] == 3

    try:
        queued = alice.post(f"/datasets/{ds['id']}/jobs", json={"method": "zero_shot"}).json()
    finally:
        _drop_queue(alice.settings.broker_url, alice.settings.queue)
    models = [store_model(ds["id"], channel_classifier_onnx()) for _ in range(3)]
    ids, totals, _ = _walk(alice, "/models", 2)
    assert ids == models and totals == [3, 3]
    assert _walk(alice, "/models", 5, dataset_id=made[0])[0] == []
    assert bob.get("/models").json() == {"data": [], "next_cursor": None, "total": 0}

    jobs, totals, pages = _walk(alice, "/jobs", 3)
    trained = [alice.get(f"/models/{m}").json()["job_id"] for m in models]
    assert jobs == [queued["id"], *trained] and totals == [4, 4] and pages == 2
    assert _walk(alice, "/jobs", 2, status="succeeded")[:2] == (trained, [3, 3])
    assert _walk(alice, "/jobs", 2, status="queued", dataset_id=ds["id"])[0] == [queued["id"]]
    assert _walk(alice, "/jobs", 2, dataset_id=made[0])[:2] == ([], [0])
    page = alice.get("/jobs", params={"limit": 1}).json()["data"][0]
    assert page == alice.get(f"/jobs/{queued['id']}").json()
    assert bob.get("/jobs").json()["total"] == 0
    for url in ("/jobs", "/models"):  # another owner's dataset is not found, as everywhere
        r = bob.get(url, params={"dataset_id": ds["id"]})
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", url
    r = alice.get("/jobs", params={"status": "done"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "status"


LIST_CURSORS = [
    "garbage!",
    "1_abc",  # not an id
    "12345678901234567_" + "a" * 32,  # past the microseconds the pattern allows
    "-1_" + "a" * 32,
    "1_" + "A" * 32,
    _cursor({"t": "2026-01-01T00:00:00+00:00", "i": "a" * 32}),  # the old opaque form
]
ITEM_CURSORS = [
    str(2**63),  # past the 64-bit key: was a 500 from the database driver (OverflowError)
    str(2**63 - 1),  # inside 64 bits but past the pattern's 18 digits
    str(10**30),
    "-1",
    "007",
    "1.5",
    "garbage!",
    _cursor({"o": "upload", "k": None, "s": 2**63}),  # the old opaque form with a key past 64 bits
]


@pytest.mark.parametrize("url", ["/datasets", "/models", "/jobs"])
@pytest.mark.parametrize("cursor", LIST_CURSORS)
def test_a_hand_made_list_cursor_is_a_422_naming_the_cursor(alice: Api, url: str, cursor: str) -> None:
    r = alice.get(url, params={"cursor": cursor})
    assert r.status_code == 422, (url, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in r.json()["errors"]] == ["cursor"]


def test_a_hand_made_items_cursor_is_a_4xx_naming_the_cursor(alice: Api) -> None:
    url = f"/datasets/{alice.make_dataset(2)['id']}/items"
    for cursor in ITEM_CURSORS:
        for order in ("upload", "margin"):
            r = alice.get(url, params={"cursor": cursor, "order": order})
            assert r.status_code == 422, (cursor, order, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert [e["field"] for e in r.json()["errors"]] == ["cursor"]
    # a position past every item is a valid, empty page (upload order); a well-formed position in any list too
    assert alice.get(url, params={"cursor": str(10**18 - 1)}).json()["data"] == []
    assert alice.get("/datasets", params={"cursor": f"{10**16 - 1}_{'f' * 32}"}).json()["data"] == []


def test_items_page_with_the_total_of_the_filter(alice: Api) -> None:
    ds = alice.make_dataset(5)
    with session_scope() as session:
        for item in session.scalars(select(Item).where(Item.dataset_id == ds["id"]).order_by(Item.seq).limit(2)):
            item.needs_review = True
        session.flush()
        refresh_review_count(session, ds["id"])  # as a job's save does
    url = f"/datasets/{ds['id']}/items"
    assert _walk(alice, url, 2)[1:] == ([5, 5, 5], 3)
    assert _walk(alice, url, 1, needs_review="true")[1:] == ([2, 2], 2)
    assert _walk(alice, url, 2, needs_review="false", order="margin")[1:] == ([3, 3], 2)


def test_job_events_page_with_the_total_of_the_job(alice: Api, bob: Api) -> None:
    from app.models import JobEvent

    ds = alice.make_dataset(2)
    try:
        job = alice.post(f"/datasets/{ds['id']}/jobs", json={"method": "zero_shot"}).json()
        other = alice.post(f"/datasets/{ds['id']}/jobs", json={"method": "zero_shot", "epochs": 2}).json()
    finally:
        _drop_queue(alice.settings.broker_url, alice.settings.queue)
    with session_scope() as session:
        for epoch in range(1, 5):
            session.add(JobEvent(job_id=job["id"], kind="epoch", data={"epoch": epoch, "epochs": 4}))
        session.add(JobEvent(job_id=other["id"], kind="epoch", data={"epoch": 1, "epochs": 2}))  # not job's
    url = f"/jobs/{job['id']}/events"
    pages, after = [], None
    while True:  # read as a poller does: `after` = the last page's next_after, while has_more
        page = alice.get(url, params={"limit": 2, **({"after": after} if after is not None else {})}).json()
        pages.append(page)
        after = page["next_after"]
        if not page["has_more"]:
            break
    kinds = [e["kind"] for p in pages for e in p["data"]]
    assert kinds == ["stage", "epoch", "epoch", "epoch", "epoch"]  # the queued stage, then the four epochs
    assert [p["total"] for p in pages] == [5, 5, 5] and [len(p["data"]) for p in pages] == [2, 2, 1]
    # an empty page after the last event: the same total (after is a cursor, not a filter)
    tail = alice.get(url, params={"after": after}).json()
    assert tail == {"data": [], "next_after": after, "has_more": False, "total": 5}
    assert alice.get(f"/jobs/{other['id']}/events").json()["total"] == 2  # its stage and its epoch
    assert bob.get(url).status_code == 404


def test_labels_exports_name_the_model_and_the_job(alice: Api) -> None:
    ds = alice.make_dataset(3)
    try:
        alice.post(f"/datasets/{ds['id']}/jobs", json={"method": "zero_shot"})
    finally:
        _drop_queue(alice.settings.broker_url, alice.settings.queue)
    old, new = store_model(ds["id"], channel_classifier_onnx()), store_model(ds["id"], channel_classifier_onnx())
    job_of = {m: alice.get(f"/models/{m}").json()["job_id"] for m in (old, new)}
    with session_scope() as session:  # as the worker writes labels: the first item by the old model, the rest new
        items = list(session.scalars(select(Item).where(Item.dataset_id == ds["id"]).order_by(Item.seq)))
        for item, model in zip(items, [old, new, new], strict=True):
            item.label, item.confidence, item.margin = item.candidates[0], 0.9, 0.8
            item.label_source, item.model_id = "model", model
        ids = [i.id for i in items]
    assert alice.patch(f"/items/{ids[2]}", json={"label": "cat"}).status_code == 200  # a reviewer's tag
    url = f"/datasets/{ds['id']}/labels"

    r = alice.get(url)
    body = r.json()
    assert (body["model_id"], body["job_id"]) == (new, job_of[new])
    assert body["produced_by"] == [
        {"model_id": old, "job_id": job_of[old], "labels": 1},
        {"model_id": new, "job_id": job_of[new], "labels": 1},
    ]
    assert [(row["model_id"], row["job_id"]) for row in body["items"]] == [
        (old, job_of[old]),
        (new, job_of[new]),
        (None, None),
    ]
    for fmt in ("json", "jsonl", "csv"):
        r = alice.get(url, params={"format": fmt})
        assert (r.headers["tagsift-model-id"], r.headers["tagsift-job-id"]) == (new, job_of[new]), fmt
    assert [json.loads(line)["job_id"] for line in alice.get(url, params={"format": "jsonl"}).text.splitlines()] == [
        job_of[old],
        job_of[new],
        None,
    ]
    table = list(csv.DictReader(io.StringIO(alice.get(url, params={"format": "csv"}).text)))
    assert [(t["model_id"], t["job_id"]) for t in table] == [(old, job_of[old]), (new, job_of[new]), ("", "")]

    untouched = alice.make_dataset(1, offset=50)
    r = alice.get(f"/datasets/{untouched['id']}/labels")
    assert r.json()["produced_by"] == [] and r.json()["model_id"] is None and "tagsift-model-id" not in r.headers


def test_whitespace_at_the_ends_of_a_tag_is_refused_not_stripped(alice: Api) -> None:
    r = alice.post("/datasets", json={"name": "x", "classes": ["\tTAB", "dog"]})
    assert r.status_code == 422
    (err,) = r.json()["errors"]
    assert (err["field"], err["item"]) == ("classes", "0") and "whitespace at its start or end" in err["message"]
    ok = alice.post("/datasets", json={"name": "x", "classes": ["TAB", "dog"]}).json()
    assert ok["classes"] == ["TAB", "dog"]

    rows = [{"file": "a.png", "candidates": ["cat", "dog "]}, {"file": "b.png", "candidates": ["cat"], "label": " cat"}]
    r = alice.upload("/datasets", rows, {"a.png": image_bytes(1), "b.png": image_bytes(2)}, name="ws")
    assert r.status_code == 422
    problems = {(e["field"], e["item"]): e["message"] for e in r.json()["errors"]}
    assert "whitespace" in problems[("candidates", "a.png")] and "whitespace" in problems[("candidates", "b.png")]

    csv_manifest = b"file,candidates,label\na.png,cat| dog,\n"
    r = alice.post(
        "/datasets",
        data={"name": "ws"},
        files=[("manifest", ("m.csv", csv_manifest, "text/csv")), ("images", ("a.png", image_bytes(1), "image/png"))],
    )
    assert r.status_code == 422 and r.json()["errors"][0]["item"] == "a.png", r.text
    one = [{"file": "z.png", "candidates": ["TAB"]}]
    r = alice.upload(f"/datasets/{ok['id']}/items", one, {"z.png": image_bytes(9)}, classes=["fox "])
    assert r.status_code == 422 and any(e["field"] == "classes" for e in r.json()["errors"])
    assert alice.get("/datasets", params={"limit": 1000}).json()["total"] == 1  # nothing stored by the refusals


def test_inferred_classes_are_sorted_and_classes_can_be_added_with_items(alice: Api) -> None:
    rows = [{"file": "a.png", "candidates": ["zebra", "lynx"]}, {"file": "b.png", "candidates": ["ant", "zebra"]}]
    r = alice.upload("/datasets", rows, {"a.png": image_bytes(1), "b.png": image_bytes(2)}, name="zoo")
    assert r.status_code == 201 and r.json()["classes"] == ["ant", "lynx", "zebra"]
    # `classes` with an upload to an existing dataset appends new classes (in the order given)
    more = [{"file": "c.png", "candidates": ["yak", "ant"], "label": "yak"}]
    r = alice.upload(f"/datasets/{r.json()['id']}/items", more, {"c.png": image_bytes(3)}, classes=["yak", "ant"])
    assert r.status_code == 201, r.text
    ds = alice.get(f"/datasets/{r.json()['dataset_id']}").json()
    assert ds["classes"] == ["ant", "lynx", "zebra", "yak"] and ds["item_count"] == 3
    # a candidate outside the classes, without `classes` naming it, is refused
    r = alice.upload(
        f"/datasets/{ds['id']}/items", [{"file": "d.png", "candidates": ["emu"]}], {"d.png": image_bytes(4)}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["item"] == "d.png"


def test_the_openapi_document_states_what_the_validation_checks(alice: Api) -> None:
    """The contract failures schemathesis found (issue 16): each constraint the server enforces is in the schema,
    and a request the schema refuses is refused (tests/app/test_fuzz.py runs every check on every route)."""
    doc = alice.client.app.openapi()
    create = doc["paths"]["/datasets"]["post"]["requestBody"]["content"]
    tag = create["application/json"]["schema"]["properties"]["classes"]["items"]
    assert tag["minLength"] == 1 and tag["maxLength"] == 200 and "pattern" in tag
    r = alice.post("/datasets", json={"name": "x", "classes": [""]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "classes"
    assert create["multipart/form-data"]["encoding"]["archive"]["contentType"] == "application/zip"
    predict = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert predict["properties"]["model_id"]["minLength"] == 1 and predict["additionalProperties"] is False
    (key,) = [p for p in doc["paths"]["/datasets/{dataset_id}/jobs"]["post"]["parameters"] if p["in"] == "header"]
    assert key["name"] == "Idempotency-Key" and key["schema"]["anyOf"][0]["maxLength"] == 200

    ds = alice.make_dataset(2)
    for bad in ("k" * 201, " padded "):
        r = alice.post(f"/datasets/{ds['id']}/jobs", json={}, headers={"Idempotency-Key": bad})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "Idempotency-Key", bad
    try:  # JSON's 3.0 is the integer 3 (JSON Schema agrees); 3.5 and "3" are not
        ok = alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 3.0, "method": "zero_shot"})
        assert ok.status_code == 202 and ok.json()["params"]["epochs"] == 3, ok.text
    finally:
        _drop_queue(alice.settings.broker_url, alice.settings.queue)
    assert alice.post(f"/datasets/{ds['id']}/jobs", json={"epochs": 3.5}).status_code == 422

    # a 405 names every method of the path, not only those of the first route that matched it
    for method, url, allow in [
        ("PUT", "/datasets", "GET, POST"),
        ("PUT", f"/datasets/{ds['id']}", "DELETE, GET"),
        ("DELETE", "/predict", "GET, POST"),
        ("PUT", "/items/x", "GET, PATCH"),
    ]:
        r = alice.client.request(method, url, headers=alice.headers)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, url, r.headers.get("allow"))

    # links lead from a response to the operations that take its ids (the stateful phase follows them)
    links = doc["paths"]["/datasets"]["post"]["responses"]["201"]["links"]
    get_dataset = doc["paths"]["/datasets/{dataset_id}"]["get"]["operationId"]
    assert links["GetDataset"] == {"operationId": get_dataset, "parameters": {"path.dataset_id": "$response.body#/id"}}
