"""Datasets and uploads against the real PostgreSQL: create, add, list, read, delete; validation; limits."""

from __future__ import annotations

import io
import json
import uuid
import zipfile

from PIL import Image

from tests.app.conftest import Api, image_bytes, jsonl, zip_bytes


def test_create_dataset_multipart_then_get_and_list(alice: Api) -> None:
    rows = [
        {"file": "a.png", "candidates": ["cat", "lynx"], "label": "cat"},
        {"file": "b.png", "candidates": ["dog"]},
    ]
    r = alice.upload("/datasets", rows, {"a.png": image_bytes(1), "b.png": image_bytes(2)}, name="pets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "pets"
    assert ds["classes"] == ["cat", "dog", "lynx"]  # default: the union of the candidates, sorted
    assert ds["item_count"] == 2 and ds["added"] == 2 and ds["duplicates"] == []
    assert {"id", "created_at"} <= ds.keys()

    detail = alice.get(f"/datasets/{ds['id']}").json()
    assert detail["class_counts"] == {"cat": 1, "lynx": 1, "dog": 1}
    assert detail["labelled_count"] == 0 and detail["needs_review_count"] == 0 and detail["reviewed_count"] == 0

    listing = alice.get("/datasets").json()["data"]
    assert [d["id"] for d in listing] == [ds["id"]]
    assert listing[0]["item_count"] == 2


def test_create_empty_json_then_add_items_csv_and_zip(alice: Api) -> None:
    r = alice.post(
        "/datasets", json={"name": "empty", "classes": ["cat", "dog"], "prompt_template": "a photo of a {}."}
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["item_count"] == 0 and ds["classes"] == ["cat", "dog"] and ds["prompt_template"] == "a photo of a {}."

    csv_manifest = b"file,candidates\nx.png,cat|dog\n"
    r = alice.post(
        f"/datasets/{ds['id']}/items",
        files=[("manifest", ("m.csv", csv_manifest, "text/csv")), ("images", ("x.png", image_bytes(10), "image/png"))],
    )
    assert r.status_code == 201, r.text
    assert r.json()["added"] == 1 and r.json()["item_count"] == 1

    # A zip carrying its own manifest, images in a folder; the manifest names them by base name.
    archive = zip_bytes(
        {
            "manifest.jsonl": jsonl(
                [{"file": "y.png", "candidates": ["dog"]}, {"file": "z.png", "candidates": ["cat"]}]
            ),
            "photos/y.png": image_bytes(11),
            "photos/z.png": image_bytes(12),
            "__MACOSX/photos/._y.png": b"junk",
        }
    )
    r = alice.post(f"/datasets/{ds['id']}/items", files=[("archive", ("a.zip", archive, "application/zip"))])
    assert r.status_code == 201, r.text
    assert r.json()["added"] == 2 and r.json()["item_count"] == 3

    items = alice.get(f"/datasets/{ds['id']}/items").json()["data"]
    assert [i["file"] for i in items] == ["x.png", "y.png", "z.png"]
    assert items[0]["candidates"] == ["cat", "dog"]


def test_json_create_validation_names_the_field(alice: Api) -> None:
    r = alice.post("/datasets", json={"name": "x"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"] == "classes" for e in r.json()["errors"])
    r = alice.post("/datasets", json={"name": "x", "classes": ["a", "a"]})
    assert r.status_code == 422 and "listed twice" in r.json()["detail"]
    r = alice.post("/datasets", content=b"name=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_batch_is_all_or_nothing_and_lists_every_bad_item(alice: Api) -> None:
    ds = alice.make_dataset(2)
    truncated = image_bytes(50, size=(64, 64), fmt="JPEG")[:-200]
    rows = [
        {"file": "good.png", "candidates": ["cat"]},
        {"file": "corrupt.jpg", "candidates": ["cat"]},
        {"file": "empty.png", "candidates": ["dog"]},
        {"file": "text.png", "candidates": ["dog"]},
        {"file": "nocands.png", "candidates": []},
        {"file": "unknown.png", "candidates": ["cat", "wolf"]},
        {"file": "long.png", "candidates": ["x" * 500]},
        {"file": "missing.png", "candidates": ["cat"]},
    ]
    images = {
        "good.png": image_bytes(51),
        "corrupt.jpg": truncated,
        "empty.png": b"",
        "text.png": b"hello, not an image",
        "nocands.png": image_bytes(52),
        "unknown.png": image_bytes(53),
        "long.png": image_bytes(54),
        "extra.png": image_bytes(55),
    }
    r = alice.upload(f"/datasets/{ds['id']}/items", rows, images)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    by_item = {}
    for e in problem["errors"]:
        by_item.setdefault(e.get("item"), []).append(e)
    for bad in [
        "corrupt.jpg",
        "empty.png",
        "text.png",
        "nocands.png",
        "unknown.png",
        "long.png",
        "missing.png",
        "extra.png",
    ]:
        assert bad in by_item, (bad, problem["errors"])
        assert all(bad in e["message"] for e in by_item[bad])
    assert "good.png" not in by_item
    assert "wolf" in by_item["unknown.png"][0]["message"]
    assert by_item["missing.png"][0]["field"] == "manifest"
    assert "nothing was stored" in problem["detail"]
    # Nothing stored: the dataset still has its 2 items.
    assert alice.get(f"/datasets/{ds['id']}").json()["item_count"] == 2


def test_duplicates_are_reported_not_stored(alice: Api) -> None:
    ds = alice.make_dataset(2)  # img0.png = image_bytes(0), img1.png = image_bytes(1)
    first = alice.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    rows = [
        {"file": "again.png", "candidates": ["cat"]},
        {"file": "new.png", "candidates": ["dog"]},
        {"file": "new-copy.png", "candidates": ["dog"]},
    ]
    images = {"again.png": image_bytes(0), "new.png": image_bytes(77), "new-copy.png": image_bytes(77)}
    r = alice.upload(f"/datasets/{ds['id']}/items", rows, images)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["added"] == 1 and body["item_count"] == 3
    dups = {d["file"]: d["duplicate_of"] for d in body["duplicates"]}
    assert dups == {"again.png": first["id"], "new-copy.png": "new.png"}


def test_manifest_and_zip_problems(alice: Api) -> None:
    ds = alice.make_dataset(1)
    url = f"/datasets/{ds['id']}/items"
    # Non-UTF-8 manifest.
    r = alice.post(
        url,
        files=[
            ("manifest", ("m.jsonl", '{"file": "a.png", "candidates": ["caf\xe9"]}\n'.encode("latin-1"), "text/plain")),
            ("images", ("a.png", image_bytes(90), "image/png")),
        ],
    )
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]
    # Unsafe member paths, a zip bomb member, an unknown form field.
    bomb = b"\0" * 3_000_000
    archive = zip_bytes({"../evil.png": image_bytes(91), "/abs.png": image_bytes(92), "bomb.png": bomb})
    r = alice.post(
        url,
        data={"imagez": "typo"},
        files=[
            ("manifest", ("m.jsonl", jsonl([{"file": "bomb.png", "candidates": ["cat"]}]), "text/plain")),
            ("archive", ("a.zip", archive, "application/zip")),
        ],
    )
    assert r.status_code == 422
    messages = " | ".join(e["message"] for e in r.json()["errors"])
    assert "../evil.png: unsafe path" in messages and "/abs.png: unsafe path" in messages
    assert "bomb.png: compressed" in messages and "imagez: unknown form field" in messages
    # Not a zip at all.
    r = alice.post(url, files=[("archive", ("a.zip", b"PK not really", "application/zip"))])
    assert r.status_code == 422 and any(e["field"] == "archive" for e in r.json()["errors"])
    assert alice.get(f"/datasets/{ds['id']}").json()["item_count"] == 1


def test_decompression_bomb_image_is_refused(alice: Api) -> None:
    ds = alice.make_dataset(1)
    big = Image.new("L", (7000, 6000))  # 42 MP > max_image_pixels (40 MP), a few KB as PNG
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    r = alice.upload(
        f"/datasets/{ds['id']}/items", [{"file": "big.png", "candidates": ["cat"]}], {"big.png": buf.getvalue()}
    )
    assert r.status_code == 422
    assert "big.png" in r.json()["errors"][0]["message"] and "over the limit" in r.json()["errors"][0]["message"]


def test_request_body_limit_answers_413(alice: Api, tagsift_env) -> None:
    tagsift_env(max_request_bytes=10_000)
    r = alice.upload("/datasets", [{"file": "a.png", "candidates": ["cat"]}], {"a.png": b"\0" * 20_000}, name="big")
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")


def test_auth_required_and_other_owners_get_404(alice: Api, bob: Api) -> None:
    ds = alice.make_dataset(1)
    item = alice.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    client = alice.client
    assert client.get("/healthz").status_code == 200
    for method, url in [
        ("GET", "/datasets"),
        ("POST", "/datasets"),
        ("GET", f"/datasets/{ds['id']}"),
        ("GET", f"/items/{item['id']}/image"),
        ("GET", "/jobs/x"),
    ]:
        r = client.request(method, url)
        assert r.status_code == 401, (method, url)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"].startswith("application/problem+json")
    assert client.get("/datasets", headers={"Authorization": "Bearer tsk_wrong"}).status_code == 401

    for url in [f"/datasets/{ds['id']}", f"/datasets/{ds['id']}/items", f"/datasets/{ds['id']}/labels"]:
        assert bob.get(url).status_code == 404, url
    assert bob.get(f"/items/{item['id']}").status_code == 404
    assert bob.get(f"/items/{item['id']}/image").status_code == 404
    assert bob.patch(f"/items/{item['id']}", json={"label": "cat"}).status_code == 404
    assert bob.delete(f"/datasets/{ds['id']}").status_code == 404
    assert bob.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 404
    assert bob.get("/datasets").json()["data"] == []
    assert alice.get(f"/datasets/{ds['id']}").status_code == 200


def test_delete_dataset_removes_items_and_unshared_blobs(alice: Api) -> None:
    from app.storage import get_storage

    seed = 10_000 + uuid.uuid4().int % 1_000_000  # images no other test's rows use (the database is shared)
    ds = alice.make_dataset(2, offset=seed)
    items = alice.get(f"/datasets/{ds['id']}/items").json()["data"]
    other = alice.make_dataset(1, offset=seed)  # shares its first image with ds
    assert alice.delete(f"/datasets/{ds['id']}").status_code == 204
    assert alice.get(f"/datasets/{ds['id']}").status_code == 404
    assert alice.get(f"/items/{items[0]['id']}").status_code == 404
    storage = get_storage()
    assert storage.exists(items[0]["sha256"])  # still used by `other`
    assert not storage.exists(items[1]["sha256"])
    other_item = alice.get(f"/datasets/{other['id']}/items").json()["data"][0]
    assert alice.get(f"/items/{other_item['id']}/image").content == image_bytes(seed)


def test_deleting_a_dataset_cancels_its_jobs_as_a_cancel_does(alice: Api) -> None:
    """The dataset's queued job ends cancelled exactly as ``POST /jobs/{id}/cancel`` ends one (cancel_requested,
    finished_at, updated_at, a ``cancelled`` event, the ``job.cancelled`` webhook); its running job is asked to stop
    (cancel_requested, an event) and left to its worker; a finished job is left alone."""
    from sqlalchemy import select, update

    from app.db import session_scope
    from app.models import Job

    hook = alice.post("/webhooks", json={"url": "https://93.184.215.14/hooks/ds", "events": ["job.cancelled"]}).json()
    ds = alice.make_dataset(2, offset=5200)
    url = f"/datasets/{ds['id']}/jobs"
    queued, running, done = (alice.post(url, json={"epochs": e}).json() for e in (2, 3, 4))
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == running["id"]).values(status="running", attempt=1))
        session.execute(update(Job).where(Job.id == done["id"]).values(status="succeeded"))
    jobs = (queued, running, done)

    def read() -> dict[str, dict]:  # each job as the API shows it, and its updated_at
        with session_scope() as session:
            rows = session.execute(select(Job.id, Job.updated_at).where(Job.id.in_([j["id"] for j in jobs]))).all()
            stamps = dict(rows)
        return {j["id"]: {**alice.get(f"/jobs/{j['id']}").json(), "updated_at": stamps[j["id"]]} for j in jobs}

    before = read()
    assert alice.delete(f"/datasets/{ds['id']}").status_code == 204
    after = read()  # the jobs outlive their dataset (their dataset_id becomes null)
    del after[done["id"]]["dataset_id"], before[done["id"]]["dataset_id"]
    q = after[queued["id"]]
    assert q["status"] == "cancelled" and q["cancel_requested"] is True and q["finished_at"]
    assert q["error"] == {"code": "cancelled", "message": "the dataset was deleted"}
    assert q["updated_at"] > before[queued["id"]]["updated_at"]
    r = after[running["id"]]
    assert r["status"] == "running" and r["cancel_requested"] is True and r["finished_at"] is None
    assert r["updated_at"] > before[running["id"]]["updated_at"]
    assert after[done["id"]] == before[done["id"]]

    def stages(job_id: str) -> list[dict]:
        return [e["data"] for e in alice.get(f"/jobs/{job_id}/events").json()["data"]][1:]  # after "queued"

    assert stages(queued["id"]) == [{"stage": "cancelled", "reason": "the dataset was deleted"}]
    assert stages(running["id"]) == [{"stage": "cancel_requested"}]
    assert stages(done["id"]) == []
    deliveries = alice.get(f"/webhooks/{hook['id']}/deliveries").json()["data"]
    assert [(d["event"], d["payload"]["data"]["job"]["id"]) for d in deliveries] == [("job.cancelled", queued["id"])]


def test_unknown_route_and_bad_json_are_problems(alice: Api) -> None:
    r = alice.get("/nope")
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    r = alice.post("/datasets", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    body = json.loads(r.text)
    assert body["status"] == 422 and body["errors"]


def test_zip_members_limit(alice: Api, tagsift_env) -> None:
    ds = alice.make_dataset(1)
    tagsift_env(max_archive_members=2)
    archive = zip_bytes({f"m{i}.png": image_bytes(200 + i) for i in range(3)}, compression=zipfile.ZIP_STORED)
    r = alice.post(f"/datasets/{ds['id']}/items", files=[("archive", ("a.zip", archive, "application/zip"))])
    assert r.status_code == 422 and "3 members" in r.text


def test_streamed_body_over_the_limit_answers_413(alice: Api, tagsift_env) -> None:
    tagsift_env(max_request_bytes=50_000)

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"name": "x", "classes": ["' + b"a" * 30_000
        yield b"b" * 30_000 + b'"]}'

    r = alice.post("/datasets", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    files = [("manifest", ("m.jsonl", b"x" * 60_000, "text/plain"))]
    r = alice.post("/predict", data={"model_id": "m"}, files=files)
    assert r.status_code == 413
