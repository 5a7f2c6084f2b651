"""The similarity map: a dataset's items placed by their image features (the 2-D layout the worker stores with a
job, ``worker/map_layout.py``), coloured by tag or by doubt; select a cluster and tag it; "similar to this item".

The layout is a JSON blob in the store; this module reads it and joins the items' current tags from the database
(the API never imports torch or ml)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.api.deps import StorageDep
from app.db import get_sessionmaker
from app.models import Item, Job
from app.services import review_queue
from app.services.datasets import get_dataset
from app.web.security import UserDep

router = APIRouter(include_in_schema=False)


def _latest_layout(session, dataset_id: str) -> Job | None:
    jobs = session.scalars(
        select(Job)
        .where(Job.dataset_id == dataset_id, Job.status == "succeeded")
        .order_by(Job.finished_at.desc(), Job.created_at.desc())
        .limit(20)
    )
    return next((j for j in jobs if isinstance((j.metrics or {}).get("layout"), dict)), None)


def map_data(owner, dataset_id: str, storage) -> dict:
    """The map of the dataset's newest job that stored one: items (id, x, y, tag index, doubt) and neighbours."""
    session = get_sessionmaker()()
    try:
        dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
        classes = list(dataset.classes)
        job = _latest_layout(session, dataset.id)
        if job is None:
            return {"dataset": dataset.id, "job": None, "classes": classes, "items": [], "nn": []}
        layout = json.loads(storage.get(job.metrics["layout"]["blob"]))
        rows = session.execute(
            select(Item.id, Item.file, Item.label, Item.label_source, Item.margin, Item.needs_review).where(
                Item.dataset_id == dataset.id
            )
        ).all()
    finally:
        session.close()
    now = {r.id: r for r in rows}
    index = {c: k for k, c in enumerate(classes)}
    items, keep = [], {}
    for k, (item_id, (x, y)) in enumerate(zip(layout["items"], layout["xy"], strict=True)):
        r = now.get(item_id)
        if r is None:  # deleted since the job ran
            continue
        keep[k] = len(items)
        tag = index.get(r.label, -1) if r.label else -1
        items.append([r.id, x, y, tag, r.margin, bool(r.needs_review), r.label_source or "", r.file])
    nn = [[keep[j] for j in layout["nn"][k] if j in keep] for k in keep]
    return {
        "dataset": dataset_id,
        "job": job.id,
        "method": layout.get("method"),
        "classes": classes,
        "items": items,
        "nn": nn,
    }


@router.get("/ui/api/datasets/{dataset_id}/map")
async def map_json(dataset_id: str, user: UserDep, storage: StorageDep) -> dict:
    """The map's data (one call; 10,000 items are about 1 MB of JSON)."""
    return await run_in_threadpool(map_data, user.owner, dataset_id, storage)


@router.get("/ui/datasets/{dataset_id}/map", response_class=HTMLResponse)
def map_page(
    request: Request,
    dataset_id: str,
    user: UserDep,
    near: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    from app.web.pages import _render

    session = get_sessionmaker()()
    try:
        summary = review_queue.dataset_summary(session=session, owner=user.owner, dataset_id=dataset_id)
    finally:
        session.close()
    return _render(request, "map.html", user, s=summary, dataset=summary.dataset, near=near or "")
