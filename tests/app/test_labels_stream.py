"""Streamed labels exports (issue 15, item 2): read a database page at a time from one snapshot, on PostgreSQL and on
the embedded SQLite default, they are byte for byte the exports written out below (CSV as literal text; JSON, JSON
Lines and Label Studio tasks as literal rows serialised by ``json.dumps``), ids and hashes filled in.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from app.db import get_engine, session_scope
from app.main import create_app
from app.models import Dataset, Item, Job, Model
from app.services import streaming
from app.services.api_keys import create_api_key
from app.services.datasets import refresh_review_count
from tests.app.conftest import Api, image_bytes


@pytest.fixture(params=["postgres", "sqlite"])
def api(request) -> Iterator[Api]:
    settings = request.getfixturevalue("prod_env" if request.param == "postgres" else "embedded_env")
    with session_scope() as session:
        key = create_api_key(session=session, owner_name=f"stream-{request.param}")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield Api(client=client, key=key, settings=settings)


# --- the expected exports, written out -----------------------------------------------------------------------------

#: The uploaded rows: (file, candidates), in upload order (four database pages of 3).
FILES = [("=1+1.png", ["cat", "dog"]), ("naïve €.png", ["cat", "dog"]), ("a,b.png", ["cat", "dog"])]
FILES += [(f"img{i}.png", ["lynx", "cat"]) for i in range(8)]

#: Each row after :func:`_varied_labels`: (label, confidence, margin, label_source, needs_review, model), model "old"
#: or "new" (its two models) or None.
LABELLED = [
    ("cat", 0.3333333333333333, 0.0, "model", True, "old"),
    ("dog", 0.25, 0.1, "model", True, "old"),
    ("cat", 0.2, 0.2, "model", True, "old"),
    (None, None, None, None, False, None),
    ("lynx", 1.0, 1.0, "reviewer", False, None),
    ("cat", 0.125, 0.5, "model", False, "new"),
    ("lynx", 0.1111111111111111, 0.6000000000000001, "model", False, "new"),
    (None, None, None, None, False, None),
    ("lynx", 0.09090909090909091, 0.8, "model", False, "new"),
    ("cat", 1.0, 1.0, "reviewer", False, None),
    ("lynx", 0.07692307692307693, 0.0, "model", True, "new"),
]
UPLOADED = [(None, None, None, None, False, None)] * len(FILES)

CSV_UPLOADED = """id,file,sha256,label,confidence,margin,label_source,needs_review,candidates,model_id,job_id
{id0},'=1+1.png,{sha0},,,,,false,cat|dog,,
{id1},naïve €.png,{sha1},,,,,false,cat|dog,,
{id2},"a,b.png",{sha2},,,,,false,cat|dog,,
{id3},img0.png,{sha3},,,,,false,lynx|cat,,
{id4},img1.png,{sha4},,,,,false,lynx|cat,,
{id5},img2.png,{sha5},,,,,false,lynx|cat,,
{id6},img3.png,{sha6},,,,,false,lynx|cat,,
{id7},img4.png,{sha7},,,,,false,lynx|cat,,
{id8},img5.png,{sha8},,,,,false,lynx|cat,,
{id9},img6.png,{sha9},,,,,false,lynx|cat,,
{id10},img7.png,{sha10},,,,,false,lynx|cat,,
"""
CSV_LABELLED = """id,file,sha256,label,confidence,margin,label_source,needs_review,candidates,model_id,job_id
{id0},'=1+1.png,{sha0},cat,0.3333333333333333,0.0,model,true,cat|dog,{old},{old_job}
{id1},naïve €.png,{sha1},dog,0.25,0.1,model,true,cat|dog,{old},{old_job}
{id2},"a,b.png",{sha2},cat,0.2,0.2,model,true,cat|dog,{old},{old_job}
{id3},img0.png,{sha3},,,,,false,lynx|cat,,
{id4},img1.png,{sha4},lynx,1.0,1.0,reviewer,false,lynx|cat,,
{id5},img2.png,{sha5},cat,0.125,0.5,model,false,lynx|cat,{new},{new_job}
{id6},img3.png,{sha6},lynx,0.1111111111111111,0.6000000000000001,model,false,lynx|cat,{new},{new_job}
{id7},img4.png,{sha7},,,,,false,lynx|cat,,
{id8},img5.png,{sha8},lynx,0.09090909090909091,0.8,model,false,lynx|cat,{new},{new_job}
{id9},img6.png,{sha9},cat,1.0,1.0,reviewer,false,lynx|cat,,
{id10},img7.png,{sha10},lynx,0.07692307692307693,0.0,model,true,lynx|cat,{new},{new_job}
"""
CSV_EMPTY = "id,file,sha256,label,confidence,margin,label_source,needs_review,candidates,model_id,job_id\n"


def _rows(ids: list[str], shas: list[str], table: list[tuple], names: dict[str, str | None]) -> list[dict]:
    """The export's rows: the literal table with the ids, hashes and the models' and jobs' ids filled in."""
    return [
        {
            "id": ids[i],
            "file": file,
            "sha256": shas[i],
            "label": label,
            "confidence": confidence,
            "margin": margin,
            "label_source": source,
            "needs_review": review,
            "candidates": candidates,
            "model_id": names[model] if model else None,
            "job_id": names[f"{model}_job"] if model else None,
        }
        for i, ((file, candidates), (label, confidence, margin, source, review, model)) in enumerate(
            zip(FILES, table, strict=True)
        )
    ]


def _task(item_id: str, file: str, candidates: list[str], *, annotation=None, prediction=None) -> dict:
    """A Label Studio task: the image's URL and the item, with a reviewer's ``annotation`` (its tag) or a model's
    ``prediction`` (tag, score, model id)."""
    task: dict = {
        "data": {
            "image": f"/items/{item_id}/image",  # TAGSIFT_PUBLIC_URL unset: a relative link
            "tagsift_item_id": item_id,
            "file": file,
            "candidates": candidates,
        }
    }
    region = {"from_name": "choice", "to_name": "image", "type": "choices"}
    if annotation:
        task["annotations"] = [{"result": [{**region, "value": {"choices": [annotation]}}]}]
    if prediction:
        tag, score, model = prediction
        result = [{**region, "value": {"choices": [tag]}, "score": score}]
        task["predictions"] = [{"model_version": model, "score": score, "result": result}]
    return task


# --- helpers --------------------------------------------------------------------------------------------------


def _models(dataset_id: str, n: int) -> list[tuple[str, str]]:
    """``n`` models of the dataset (their succeeded jobs too), oldest first, as the worker stores them: (model, job)."""
    ids = []
    with session_scope() as session:
        owner_id = session.get(Dataset, dataset_id).owner_id
        for _ in range(n):
            job = Job(owner_id=owner_id, dataset_id=dataset_id, status="succeeded", params={"method": "coop"})
            session.add(job)
            session.flush()
            model = Model(
                owner_id=owner_id,
                dataset_id=dataset_id,
                job_id=job.id,
                backbone="tiny",
                method="coop",
                classes=["cat", "lynx", "dog"],
            )
            session.add(model)
            session.flush()
            job.model_id = model.id
            ids.append((model.id, job.id))
    return ids


def _varied_labels(dataset_id: str) -> dict[str, str]:
    """Every kind of row (:data:`LABELLED`): untagged, tagged by an older and a newer model, a reviewer's tag, odd
    floats. Returns the ids of the two models and their jobs ("old", "old_job", "new", "new_job")."""
    (old, old_job), (new, new_job) = _models(dataset_id, 2)
    with session_scope() as session:
        items = list(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)))
        for i, item in enumerate(items):
            if i % 4 == 3:
                continue  # untagged
            item.label = item.candidates[i % 2]
            item.confidence, item.margin = 1 / (i + 3), (0.1 * i) % 1
            item.label_source, item.model_id = "model", old if i < 4 else new
            item.needs_review = item.margin < 0.35
            if i % 5 == 4:
                item.label_source, item.model_id, item.confidence, item.margin = "reviewer", None, 1.0, 1.0
        session.flush()
        refresh_review_count(session, dataset_id)
    return {"old": old, "old_job": old_job, "new": new, "new_job": new_job}


def _get(api: Api, url: str, fmt: str) -> tuple[bytes, dict]:
    with api.client.stream("GET", url, params={"format": fmt}, headers=api.headers) as r:
        assert r.status_code == 200, (fmt, r.read())
        body = b"".join(r.iter_bytes())
    return body, dict(r.headers)


# --- tests ----------------------------------------------------------------------------------------------------


def test_streamed_exports_are_the_bytes_of_the_whole_export(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "EXPORT_PAGE", 3)  # 11 items: four database pages
    rows = [{"file": file, "candidates": candidates} for file, candidates in FILES]
    images = {r["file"]: image_bytes(700 + i) for i, r in enumerate(rows)}
    created = api.upload("/datasets", rows, images, name="stream", classes=["cat", "lynx", "dog"])
    assert created.status_code == 201, created.text
    ds = created.json()["id"]
    url = f"/datasets/{ds}/labels"
    empty = api.post("/datasets", json={"name": "empty", "classes": ["cat"]}).json()["id"]

    with session_scope() as session:
        ids = list(session.scalars(select(Item.id).where(Item.dataset_id == ds).order_by(Item.seq)))
    shas = [hashlib.sha256(images[file]).hexdigest() for file, _ in FILES]
    filled = {**{f"id{i}": v for i, v in enumerate(ids)}, **{f"sha{i}": v for i, v in enumerate(shas)}}

    for state in ("uploaded", "labelled"):
        names: dict[str, str | None] = {"old": None, "old_job": None, "new": None, "new_job": None}
        if state == "labelled":
            names = _varied_labels(ds)
        table = LABELLED if state == "labelled" else UPLOADED
        rows = _rows(ids, shas, table, names)
        produced_by = [
            {"model_id": names[m], "job_id": names[f"{m}_job"], "labels": n} for m, n in (("old", 3), ("new", 4))
        ]
        newest = {"model_id": names["new"], "job_id": names["new_job"]}
        whole = {
            "dataset_id": ds,
            "classes": ["cat", "lynx", "dog"],
            **newest,
            "produced_by": produced_by if state == "labelled" else [],
            "items": rows,
        }
        expected = {
            "json": json.dumps(whole).encode(),
            "jsonl": "".join(json.dumps(r) + "\n" for r in rows).encode(),
            "csv": (CSV_LABELLED if state == "labelled" else CSV_UPLOADED).format(**filled, **names).encode(),
        }
        for fmt in ("json", "jsonl", "csv"):
            body, headers = _get(api, url, fmt)
            assert body == expected[fmt], (state, fmt, body[:300], expected[fmt][:300])
            assert headers.get("tagsift-model-id") == newest["model_id"], (state, fmt)
            assert headers.get("tagsift-job-id") == newest["job_id"], (state, fmt)
        tasks = [_task(ids[i], file, candidates) for i, (file, candidates) in enumerate(FILES)]
        if state == "labelled":
            old, new = names["old"], names["new"]
            tasks = [
                _task(ids[0], "=1+1.png", ["cat", "dog"], prediction=("cat", 0.3333333333333333, old)),
                _task(ids[1], "naïve €.png", ["cat", "dog"], prediction=("dog", 0.25, old)),
                _task(ids[2], "a,b.png", ["cat", "dog"], prediction=("cat", 0.2, old)),
                _task(ids[3], "img0.png", ["lynx", "cat"]),
                _task(ids[4], "img1.png", ["lynx", "cat"], annotation="lynx"),
                _task(ids[5], "img2.png", ["lynx", "cat"], prediction=("cat", 0.125, new)),
                _task(ids[6], "img3.png", ["lynx", "cat"], prediction=("lynx", 0.1111111111111111, new)),
                _task(ids[7], "img4.png", ["lynx", "cat"]),
                _task(ids[8], "img5.png", ["lynx", "cat"], prediction=("lynx", 0.09090909090909091, new)),
                _task(ids[9], "img6.png", ["lynx", "cat"], annotation="cat"),
                _task(ids[10], "img7.png", ["lynx", "cat"], prediction=("lynx", 0.07692307692307693, new)),
            ]
        assert _get(api, url, "label-studio")[0] == json.dumps(tasks).encode(), state

    empty_json = {"dataset_id": empty, "classes": ["cat"], "model_id": None, "job_id": None, "produced_by": []}
    assert _get(api, f"/datasets/{empty}/labels", "json")[0] == json.dumps({**empty_json, "items": []}).encode()
    assert _get(api, f"/datasets/{empty}/labels", "jsonl")[0] == b""
    assert _get(api, f"/datasets/{empty}/labels", "csv")[0] == CSV_EMPTY.encode()
    assert _get(api, f"/datasets/{empty}/labels", "label-studio")[0] == b"[]"

    # bad parameters are answered before any byte is streamed
    assert api.get("/datasets/0123456789abcdef0123456789abcdef/labels").status_code == 404
    r = api.get(url, params={"format": "label-studio", "from_name": " "})
    assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["from_name"]
    assert api.get(url, params={"format": "xml"}).status_code == 422


def test_an_export_larger_than_one_database_page(api: Api) -> None:
    n = 2 * streaming.EXPORT_PAGE + 345
    ds = api.make_dataset(1)
    with session_scope() as session:  # the rows as uploads leave them (the upload path is not what this measures)
        session.execute(
            insert(Item),
            [
                {
                    "id": f"{ds['id'][:20]}{i:012d}",
                    "dataset_id": ds["id"],
                    "seq": i,
                    "file": f"bulk{i}.png",
                    "sha256": f"{i:064x}",
                    "width": 8,
                    "height": 8,
                    "candidates": ["cat", "dog"],
                    "label": "cat" if i % 2 else None,
                    "label_source": "model" if i % 2 else None,
                    "confidence": 0.75 if i % 2 else None,
                    "margin": 0.5 if i % 2 else None,
                    "needs_review": False,
                }
                for i in range(2, n + 1)
            ],
        )
    with session_scope() as session:
        ids = list(session.scalars(select(Item.id).where(Item.dataset_id == ds["id"]).order_by(Item.seq)))
    assert len(ids) == n
    url = f"/datasets/{ds['id']}/labels"

    assert [r["id"] for r in json.loads(_get(api, url, "json")[0])["items"]] == ids
    assert [json.loads(line)["id"] for line in _get(api, url, "jsonl")[0].decode().splitlines()] == ids
    assert [r["id"] for r in csv.DictReader(io.StringIO(_get(api, url, "csv")[0].decode()))] == ids
    tasks = json.loads(_get(api, url, "label-studio")[0])
    assert [t["data"]["tagsift_item_id"] for t in tasks] == ids
    assert sum("predictions" in t for t in tasks) == n // 2


def test_a_stream_reads_one_snapshot_and_gives_its_connection_back(api: Api) -> None:
    """Rows written after the export started are not in it; an export dropped half-way closes its session."""
    from app.services.streaming import stream_in_snapshot

    ds = api.make_dataset(3)
    stmt = select(Item.seq, Item.label).where(Item.dataset_id == ds["id"])
    before = get_engine().pool.checkedout()

    def body(session, _):
        for rows in streaming.item_pages(session, stmt, page=1):
            yield ",".join(str(r.label) for r in rows)

    first, chunks = stream_in_snapshot(
        lambda s: s.scalar(select(Item.id).where(Item.dataset_id == ds["id"]).limit(1)), body
    )
    assert first is not None and get_engine().pool.checkedout() == before + 1
    with session_scope() as session:  # a job labels every item while the export streams
        for item in session.scalars(select(Item).where(Item.dataset_id == ds["id"])):
            item.label, item.label_source = "dog", "model"
    assert list(chunks) == ["None", "None", "None"]  # the snapshot of its start
    assert get_engine().pool.checkedout() == before

    _, dropped = stream_in_snapshot(lambda s: None, body)
    assert next(dropped) == "dog"
    del dropped
    gc.collect()
    assert get_engine().pool.checkedout() == before
