"""Items: pagination, the review queue by margin, a reviewer's tag, the image, and the labels export."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import func, select

from app.db import session_scope
from app.models import Dataset, Item, Owner
from app.services.datasets import refresh_review_count
from app.services.reviews import Reviewer, decide, undo_last
from tests.app.conftest import Api, image_bytes


def _label_like_the_worker(dataset_id: str, margins: list[float]) -> list[str]:
    """Write model labels as the worker does (label, confidence, margin, needs_review); returns ids in upload order."""
    with session_scope() as session:
        items = list(session.scalars(select(Item).where(Item.dataset_id == dataset_id).order_by(Item.seq)))
        for item, margin in zip(items, margins, strict=True):
            item.label = item.candidates[0]
            item.confidence = 0.5 + margin / 2
            item.margin = margin
            item.label_source = "model"
            item.needs_review = margin < 0.2
        session.flush()
        refresh_review_count(session, dataset_id)
        return [i.id for i in items]


def test_cursor_pagination_walks_every_item_once(alice: Api) -> None:
    ds = alice.make_dataset(7)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = alice.get(f"/datasets/{ds['id']}/items", params=params).json()
        seen += [i["file"] for i in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"img{i}.png" for i in range(7)] and pages == 3
    item = page["data"][0]
    assert item["image_url"] == f"/items/{item['id']}/image"
    assert {"candidates", "label", "confidence", "margin", "label_source"} <= item.keys()
    assert alice.get(f"/datasets/{ds['id']}/items", params={"cursor": "garbage!"}).status_code == 422
    assert alice.get(f"/datasets/{ds['id']}/items", params={"limit": 0}).status_code == 422
    assert alice.get(f"/datasets/{ds['id']}/items", params={"order": "random"}).status_code == 422


def test_review_queue_orders_by_margin_most_doubtful_first(alice: Api) -> None:
    ds = alice.make_dataset(6)
    ids = _label_like_the_worker(ds["id"], [0.9, 0.05, 0.15, 0.5, 0.01, 0.15])
    url = f"/datasets/{ds['id']}/items"
    queue, cursor = [], None
    while True:
        page = alice.get(
            url,
            params={"needs_review": "true", "order": "margin", "limit": 2, **({"cursor": cursor} if cursor else {})},
        ).json()
        queue += [(i["id"], i["margin"]) for i in page["data"]]
        if not (cursor := page["next_cursor"]):
            break
    assert [i for i, _ in queue] == [ids[4], ids[1], ids[2], ids[5]]  # ties (0.15) in upload order
    all_by_margin = alice.get(url, params={"order": "margin"}).json()["data"]
    assert [i["margin"] for i in all_by_margin] == sorted(i["margin"] for i in all_by_margin)
    # The cursor is the last item's position: in margin order the page continues after that item's margin.
    first = alice.get(url, params={"order": "margin", "limit": 1}).json()
    assert first["next_cursor"] == str(ids.index(first["data"][0]["id"]) + 1)  # upload sequence numbers from 1
    rest = alice.get(url, params={"order": "margin", "cursor": first["next_cursor"]}).json()["data"]
    assert [i["id"] for i in first["data"] + rest] == [i["id"] for i in all_by_margin]
    r = alice.get(url, params={"order": "margin", "cursor": "999"})  # no such item to continue after
    assert r.status_code == 404 and [e["field"] for e in r.json()["errors"]] == ["cursor"]

    detail = alice.get(f"/datasets/{ds['id']}").json()
    assert detail["labelled_count"] == 6 and detail["needs_review_count"] == 4


def test_reviewer_label_makes_the_item_certain(alice: Api) -> None:
    ds = alice.make_dataset(3)
    ids = _label_like_the_worker(ds["id"], [0.1, 0.1, 0.1])
    item = alice.get(f"/items/{ids[0]}").json()  # candidates ["cat", "lynx"]
    r = alice.patch(f"/items/{ids[0]}", json={"label": "lynx"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["label"] == "lynx" and body["label_source"] == "reviewer"
    assert body["confidence"] == 1.0 and body["margin"] == 1.0 and body["needs_review"] is False
    assert body["candidates"] == item["candidates"]
    # A class outside the candidates is refused unless the widening is asked for; then it joins them.
    r = alice.patch(f"/items/{ids[1]}", json={"label": "cat"})  # candidates ["lynx", "dog"]
    assert r.status_code == 422 and r.json()["errors"][0] == {
        "field": "label",
        "item": ids[1],
        "message": f"label: 'cat' is not among item {ids[1]}'s candidates ('lynx', 'dog'); send "
        '"add_to_candidates": true to add it',
    }
    assert alice.get(f"/items/{ids[1]}").json()["candidates"] == ["lynx", "dog"]  # nothing changed
    r = alice.patch(f"/items/{ids[1]}", json={"label": "cat", "add_to_candidates": True})
    assert r.status_code == 200 and r.json()["candidates"] == ["lynx", "dog", "cat"]
    # Whitespace at the ends of a tag is refused, naming the field and the item, never stripped.
    r = alice.patch(f"/items/{ids[2]}", json={"label": "\tdog"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "label"
    assert r.json()["errors"][0]["item"] == ids[2] and "whitespace" in r.json()["detail"]
    r = alice.patch(f"/items/{ids[2]}", json={"label": "wolf"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "label"
    r = alice.patch(f"/items/{ids[2]}", json={"labl": "cat"})
    assert r.status_code == 422 and "labl" in r.text
    detail = alice.get(f"/datasets/{ds['id']}").json()
    assert detail["reviewed_count"] == 2 and detail["needs_review_count"] == 1
    queue = alice.get(f"/datasets/{ds['id']}/items", params={"needs_review": "true"}).json()["data"]
    assert [i["id"] for i in queue] == [ids[2]]


def test_item_image_returns_the_uploaded_bytes(alice: Api) -> None:
    ds = alice.make_dataset(1, offset=400)
    item = alice.get(f"/datasets/{ds['id']}/items").json()["data"][0]
    r = alice.get(item["image_url"])
    assert r.status_code == 200 and r.content == image_bytes(400)
    assert r.headers["content-type"] == "image/png" and r.headers["etag"] == f'"{item["sha256"]}"'
    assert alice.get("/items/doesnotexist/image").status_code == 404


def test_labels_export_in_three_formats(alice: Api) -> None:
    ds = alice.make_dataset(3)
    ids = _label_like_the_worker(ds["id"], [0.9, 0.05, 0.5])
    alice.patch(f"/items/{ids[1]}", json={"label": "dog"})
    url = f"/datasets/{ds['id']}/labels"

    as_json = alice.get(url).json()
    assert as_json["classes"] == ["cat", "lynx", "dog"]
    rows = as_json["items"]
    assert [r["id"] for r in rows] == ids
    assert rows[0]["label"] == "cat" and rows[0]["margin"] == 0.9 and rows[0]["label_source"] == "model"
    assert rows[1]["label"] == "dog" and rows[1]["label_source"] == "reviewer" and rows[1]["confidence"] == 1.0

    r = alice.get(url, params={"format": "jsonl"})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in r.text.splitlines()] == rows

    r = alice.get(url, params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [t["id"] for t in table] == ids
    assert table[0]["label"] == "cat" and float(table[0]["confidence"]) == rows[0]["confidence"]
    assert table[1]["label_source"] == "reviewer" and table[0]["candidates"] == "cat|lynx"

    assert alice.get(url, params={"format": "xml"}).status_code == 422


def test_list_totals_are_the_datasets_counts_through_every_write(alice: Api) -> None:
    """The item lists' totals come from the dataset's counts, not a count(*) per page: uploads, a job's labels,
    decisions one at a time and in bulk, and undos keep them equal to the rows (and to the detail's own scan)."""
    ds = alice.make_dataset(6)
    url = f"/datasets/{ds['id']}/items"

    def counts() -> tuple[int, int]:
        with session_scope() as session:
            dataset = session.get(Dataset, ds["id"])
            rows = select(func.count()).select_from(Item).where(Item.dataset_id == ds["id"])
            n, r = session.scalar(rows), session.scalar(rows.where(Item.needs_review.is_(True)))
            assert (dataset.item_count, dataset.review_count) == (n, r)
        filters = ({}, {"needs_review": "true"}, {"needs_review": "false"})
        assert [alice.get(url, params=p).json()["total"] for p in filters] == [n, r, n - r]
        detail = alice.get(f"/datasets/{ds['id']}").json()
        assert (detail["item_count"], detail["needs_review_count"]) == (n, r)
        return n, r

    assert counts() == (6, 0)
    rows = [{"file": f"more{i}.png", "candidates": ["cat", "dog"]} for i in range(3)]
    r = alice.upload(url, rows, {f"more{i}.png": image_bytes(100 + i) for i in range(3)})
    assert r.status_code == 201 and r.json()["item_count"] == 9, r.text
    again = alice.upload(url, rows[:1], {"more0.png": image_bytes(100)})  # a duplicate adds nothing
    assert again.status_code == 201 and again.json()["item_count"] == 9, again.text
    assert counts() == (9, 0)

    ids = _label_like_the_worker(ds["id"], [0.1, 0.5, 0.05, 0.9, 0.15, 0.3, 0.01, 0.6, 0.7])  # 4 below 0.2
    assert counts() == (9, 4)
    assert alice.patch(f"/items/{ids[0]}", json={"label": "cat"}).status_code == 200  # leaves the queue
    assert alice.patch(f"/items/{ids[1]}", json={"label": "lynx"}).status_code == 200  # was not in it
    assert counts() == (9, 3)
    with session_scope() as session:
        owner_id = session.get(Dataset, ds["id"]).owner_id
    owner, who = Owner(id=owner_id, name="alice"), Reviewer(api_key_id=None, name="test")
    with session_scope() as session:  # the web app's bulk decision
        decide(
            session=session, owner=owner, item_ids=[ids[2], ids[4], ids[3]], action="accept", label=None, reviewer=who
        )
    assert counts() == (9, 1)
    with session_scope() as session:  # the web app's undo
        undo_last(session=session, owner=owner, item_id=ids[4], reviewer=who)  # back into the queue
        undo_last(session=session, owner=owner, item_id=ids[3], reviewer=who)  # was never in it
    assert counts() == (9, 2)


def test_decisions_during_a_jobs_save_neither_deadlock_nor_miscount(alice: Api) -> None:
    """Reviewers deciding while a job saves its labels (PostgreSQL, real row locks): every writer takes the
    dataset's row before item rows, so nothing deadlocks, and the review count ends equal to the rows."""
    import threading

    from sqlalchemy import update

    from app.services.datasets import lock_dataset

    ds = alice.make_dataset(40)
    ids = _label_like_the_worker(ds["id"], [0.01 * i for i in range(40)])  # 20 in the queue
    with session_scope() as session:
        owner = Owner(id=session.get(Dataset, ds["id"]).owner_id, name="alice")
    errors: list[BaseException] = []

    def job_saves(rounds: int) -> None:  # worker.job_rows.save_result's order: the dataset, then the items
        try:
            for r in range(rounds):
                with session_scope() as session:
                    lock_dataset(session, ds["id"])
                    session.execute(
                        update(Item)
                        .where(Item.dataset_id == ds["id"], Item.label_source != "reviewer")
                        .values(needs_review=(Item.seq % 2 == r % 2))
                    )
                    refresh_review_count(session, ds["id"])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def reviewer(chunk: list[str]) -> None:
        try:
            for item_id in chunk:
                with session_scope() as session:
                    decide(
                        session=session,
                        owner=owner,
                        item_ids=[item_id],
                        action="accept",
                        label=None,
                        reviewer=Reviewer(api_key_id=None, name="r"),
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job_saves, args=(30,))]
    threads += [threading.Thread(target=reviewer, args=(ids[k::4],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer is stuck"
    assert not errors, errors
    with session_scope() as session:
        rows = select(func.count()).select_from(Item).where(Item.dataset_id == ds["id"])
        dataset = session.get(Dataset, ds["id"])
        assert dataset.review_count == session.scalar(rows.where(Item.needs_review.is_(True)))
        assert session.scalar(rows.where(Item.label_source == "reviewer")) == 40  # every decision landed
    assert alice.get(f"/datasets/{ds['id']}/items", params={"needs_review": "true"}).json()["total"] == 0
