"""Streamed labels exports (issue 15, item 2): the bytes of the whole export built at once, read a database page at a
time from one snapshot, on PostgreSQL and on the embedded SQLite default.

``_whole_export`` and ``_whole_tasks`` are the exports as they were built before streaming (the whole body in
memory), kept here as the reference every streamed byte is compared with.
"""

from __future__ import annotations

import csv
import gc
import io
import json
from collections import Counter
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
from app.services.items import image_url
from app.services.labels import CSV_COLUMNS, csv_safe
from tests.app.conftest import Api, image_bytes

FORMATS = ("json", "jsonl", "csv", "label-studio")


@pytest.fixture(params=["postgres", "sqlite"])
def api(request) -> Iterator[Api]:
    settings = request.getfixturevalue("prod_env" if request.param == "postgres" else "embedded_env")
    with session_scope() as session:
        key = create_api_key(session=session, owner_name=f"stream-{request.param}")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield Api(client=client, key=key, settings=settings)


# --- the exports as they were built before streaming (the reference) ----------------------------------------------


def _whole_export(dataset_id: str, fmt: str) -> tuple[bytes, str | None, str | None]:
    with session_scope() as session:
        dataset = session.get(Dataset, dataset_id)
        stmt = (
            select(Item, Model.job_id)
            .outerjoin(Model, Model.id == Item.model_id)
            .where(Item.dataset_id == dataset.id)
            .order_by(Item.seq)
        )
        rows = [
            {
                "id": item.id,
                "file": item.file,
                "sha256": item.sha256,
                "label": item.label,
                "confidence": item.confidence,
                "margin": item.margin,
                "label_source": item.label_source,
                "needs_review": bool(item.needs_review),
                "candidates": item.candidates,
                "model_id": item.model_id,
                "job_id": job_id,
            }
            for item, job_id in session.execute(stmt)
        ]
        counts = Counter(r["model_id"] for r in rows if r["model_id"] is not None and r["label_source"] == "model")
        models = session.execute(
            select(Model.id, Model.job_id).where(Model.id.in_(list(counts))).order_by(Model.created_at, Model.id)
        ).all()
        produced_by = [{"model_id": m, "job_id": j, "labels": counts[m]} for m, j in models]
        newest = produced_by[-1] if produced_by else {"model_id": None, "job_id": None}
        if fmt == "json":
            body = json.dumps(
                {
                    "dataset_id": dataset.id,
                    "classes": dataset.classes,
                    "model_id": newest["model_id"],
                    "job_id": newest["job_id"],
                    "produced_by": produced_by,
                    "items": rows,
                }
            )
        elif fmt == "jsonl":
            body = "".join(json.dumps(r) + "\n" for r in rows)
        else:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for r in rows:
                writer.writerow(
                    [
                        r["id"],
                        csv_safe(r["file"]),
                        r["sha256"],
                        csv_safe(r["label"] or ""),
                        "" if r["confidence"] is None else repr(r["confidence"]),
                        "" if r["margin"] is None else repr(r["margin"]),
                        r["label_source"] or "",
                        "true" if r["needs_review"] else "false",
                        csv_safe("|".join(r["candidates"])),
                        r["model_id"] or "",
                        r["job_id"] or "",
                    ]
                )
            body = buf.getvalue()
    return body.encode(), newest["model_id"], newest["job_id"]


def _region(from_name: str, to_name: str, label: str, *, score: float | None = None) -> dict:
    region: dict = {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}
    if score is not None:
        region["score"] = score
    return region


def _whole_tasks(dataset_id: str, settings, from_name: str = "choice", to_name: str = "image") -> bytes:
    tasks = []
    with session_scope() as session:
        for item in session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)):
            task: dict = {
                "data": {
                    "image": image_url(item.id, settings),
                    "tagsift_item_id": item.id,
                    "file": item.file,
                    "candidates": item.candidates,
                }
            }
            if item.label is not None and item.label_source == "reviewer":
                task["annotations"] = [{"result": [_region(from_name, to_name, item.label)]}]
            elif item.label is not None:
                task["predictions"] = [
                    {
                        "model_version": item.model_id or "tagsift",
                        "score": item.confidence,
                        "result": [_region(from_name, to_name, item.label, score=item.confidence)],
                    }
                ]
            tasks.append(task)
    return json.dumps(tasks).encode()


# --- helpers --------------------------------------------------------------------------------------------------


def _models(dataset_id: str, n: int) -> list[str]:
    """``n`` models of the dataset (their succeeded jobs too), oldest first, as the worker stores them."""
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
            ids.append(model.id)
    return ids


def _varied_labels(dataset_id: str) -> None:
    """Every kind of row: untagged, tagged by an older and a newer model, a reviewer's tag, odd floats."""
    old, new = _models(dataset_id, 2)
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


def _get(api: Api, url: str, fmt: str) -> tuple[bytes, dict]:
    with api.client.stream("GET", url, params={"format": fmt}, headers=api.headers) as r:
        assert r.status_code == 200, (fmt, r.read())
        body = b"".join(r.iter_bytes())
    return body, dict(r.headers)


# --- tests ----------------------------------------------------------------------------------------------------


def test_streamed_exports_are_the_bytes_of_the_whole_export(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streaming, "EXPORT_PAGE", 3)  # 11 items: four database pages
    rows = [{"file": name, "candidates": ["cat", "dog"]} for name in ("=1+1.png", "naïve €.png", "a,b.png")]
    rows += [{"file": f"img{i}.png", "candidates": ["lynx", "cat"]} for i in range(8)]
    images = {r["file"]: image_bytes(700 + i) for i, r in enumerate(rows)}
    created = api.upload("/datasets", rows, images, name="stream", classes=["cat", "lynx", "dog"])
    assert created.status_code == 201, created.text
    ds = created.json()["id"]
    url = f"/datasets/{ds}/labels"
    empty = api.post("/datasets", json={"name": "empty", "classes": ["cat"]}).json()["id"]

    for state in ("uploaded", "labelled"):
        if state == "labelled":
            _varied_labels(ds)
        for fmt in FORMATS:
            body, headers = _get(api, url, fmt)
            if fmt == "label-studio":
                assert body == _whole_tasks(ds, api.settings), (state, fmt)
                continue
            expected, model_id, job_id = _whole_export(ds, fmt)
            assert body == expected, (state, fmt, body[:300], expected[:300])
            assert headers.get("tagsift-model-id") == model_id and headers.get("tagsift-job-id") == job_id
            assert (model_id is not None) == (state == "labelled")
            assert _get(api, f"/datasets/{empty}/labels", fmt)[0] == _whole_export(empty, fmt)[0], fmt
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
