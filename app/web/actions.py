"""JSON calls made by the pages' scripts (cookie session + ``X-CSRF-Token``): uploads, review decisions, undo,
job progress and predictions. Errors are problem+json, as in the API, so the pages show the same messages."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy import select

from app.api.deps import SessionDep, SettingsDep, StorageDep
from app.api.routes.jobs import MAX_EVENT_ID
from app.checks import shorten
from app.db import in_session
from app.errors import FieldError, InvalidInput, NotFound
from app.models import Dataset, Item
from app.services import datasets as datasets_service
from app.services import jobs as jobs_service
from app.services import models as models_service
from app.services import reviews
from app.uploads.forms import read_multipart, read_predict_form, require_multipart
from app.web.security import CsrfUserDep, UserDep

router = APIRouter(prefix="/ui/api", include_in_schema=False)


#: What browsers write for these characters in a multipart file name (the HTML standard's form encoding).
BROWSER_ESCAPES = {"%22": '"', "%0D": "\r", "%0A": "\n"}


def browser_names(raw) -> None:
    """Give back the real names of files whose name holds ``"`` (Chrome and Firefox send ``%22``): a name is decoded
    only when it holds such an escape and does not appear as sent in the manifest, so a file really named with
    ``%22`` that the manifest lists keeps its name."""
    manifest = raw.manifest or b""
    for k, (name, data) in enumerate(raw.images):
        if any(e in name for e in BROWSER_ESCAPES) and name.encode() not in manifest:
            real = name
            for escaped, char in BROWSER_ESCAPES.items():
                real = real.replace(escaped, char)
            raw.images[k] = (real, data)


def item_state(item: Item) -> dict:
    return {
        "id": item.id,
        "label": item.label,
        "label_source": item.label_source,
        "needs_review": bool(item.needs_review),
        "candidates": list(item.candidates),
        "confidence": item.confidence,
        "margin": item.margin,
    }


@router.post("/datasets", status_code=201)
async def create_dataset(request: Request, user: CsrfUserDep, storage: StorageDep, settings: SettingsDep) -> dict:
    """The upload form: the same multipart fields, validation and per-item errors as ``POST /datasets``."""
    require_multipart(request)
    raw = await read_multipart(request, settings)
    browser_names(raw)
    created = await run_in_threadpool(
        in_session,
        datasets_service.create_dataset_from_upload,
        storage=storage,
        owner=user.owner,
        raw=raw,
        settings=settings,
    )
    return {"id": created.id, "added": created.added, "url": f"/ui/datasets/{created.id}"}


@router.post("/datasets/{dataset_id}/items", status_code=201)
async def add_items(
    request: Request, dataset_id: str, user: CsrfUserDep, storage: StorageDep, settings: SettingsDep
) -> dict:
    require_multipart(request)
    raw = await read_multipart(request, settings)
    browser_names(raw)
    added = await run_in_threadpool(
        in_session,
        datasets_service.add_items,
        storage=storage,
        owner=user.owner,
        dataset_id=dataset_id,
        raw=raw,
        settings=settings,
    )
    return {"added": added.added, "duplicates": len(added.duplicates), "item_count": added.item_count}


class Decision(BaseModel):
    items: list[str] = Field(min_length=1, max_length=10_000)
    action: Literal["assign", "accept"]
    label: str | None = Field(None, max_length=500)


@router.post("/review")
def review(decision: Decision, user: CsrfUserDep, session: SessionDep) -> dict:
    """Assign a tag to (or accept the model's tag of) one or more items; each decision goes to the history.

    A tag is assigned only to the items whose candidates hold it (a bulk "Assign" or the map's selection); the
    others are left as they are and listed in ``skipped``. An unknown or another team's item is a 404."""
    ids = list(dict.fromkeys(decision.items))
    skipped: list[str] = []
    if decision.action == "assign":
        if not decision.label:
            error = FieldError(field="label", message="label: required")
            raise InvalidInput("label: required to assign", errors=[error])
        holding = _holding(session, user.owner, ids, decision.label)
        skipped = [i for i in ids if i not in holding]
        ids = [i for i in ids if i in holding]
    items = []
    if ids:
        items = reviews.decide(
            session=session,
            owner=user.owner,
            item_ids=ids,
            action=decision.action,
            label=decision.label,
            reviewer=user.reviewer,
        )
    return {"items": [item_state(i) for i in items], "skipped": skipped}


def _holding(session, owner, ids: list[str], label: str) -> set[str]:
    """The ids among ``ids`` of the owner's items whose candidates hold ``label``; 404 for an unknown one."""
    rows = session.execute(
        select(Item.id, Item.candidates, Dataset.classes)
        .join(Dataset, Dataset.id == Item.dataset_id)
        .where(Item.id.in_(ids), Dataset.owner_id == owner.id)
    ).all()
    found = {r.id: r.candidates for r in rows}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"item {shorten(missing[0])!r} not found")
    if any(label not in (r.classes or []) for r in rows):
        message = f"label: {shorten(label)!r} is not one of the dataset's classes"
        raise InvalidInput(message, errors=[FieldError(field="label", message=message)])
    return {i for i, candidates in found.items() if label in (candidates or [])}


@router.post("/items/{item_id}/skip")
def skip(item_id: str, user: CsrfUserDep, session: SessionDep) -> dict:
    """The reviewer skipped the item (Space): recorded in its history, the item unchanged."""
    reviews.record_skip(session=session, owner=user.owner, item_id=item_id, reviewer=user.reviewer)
    return {"skipped": item_id}


@router.post("/items/{item_id}/undo")
def undo(item_id: str, user: CsrfUserDep, session: SessionDep) -> dict:
    """Undo the item's latest decision (its previous tag, source and model come back)."""
    return item_state(reviews.undo_last(session=session, owner=user.owner, item_id=item_id, reviewer=user.reviewer))


@router.get("/jobs/{job_id}")
def job_progress(
    job_id: str, user: UserDep, session: SessionDep, after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None
) -> dict:
    """The job's state and its events after ``after`` (the page polls this)."""
    job = jobs_service.read_job(session=session, owner=user.owner, job_id=job_id)
    events = jobs_service.list_events(session=session, owner=user.owner, job_id=job_id, after=after, limit=500)
    return {
        "job": job.model_dump(mode="json"),
        "events": [e.model_dump(mode="json") for e in events.data],
        "next_after": events.next_after,
    }


@router.get("/datasets/{dataset_id}/live")
def live(
    dataset_id: str, user: UserDep, session: SessionDep, items: Annotated[str, Query(max_length=8000)] = ""
) -> dict:
    """What the review page polls (static/live.js): the latest refit, the estimate, and the tags of its items."""
    from app.services import refits

    dataset = datasets_service.get_dataset(session=session, owner=user.owner, dataset_id=dataset_id)
    ids = [i for i in items.split(",") if i][:200]
    return {**refits.live_state(session, dataset), "items": refits.item_states(session, dataset.id, ids)}


@router.post("/predict")
async def predict(request: Request, user: CsrfUserDep, storage: StorageDep, settings: SettingsDep) -> dict:
    """Try a model on dropped images (the same form and answer as ``POST /predict``)."""
    raw = await read_predict_form(request, settings)
    result = await run_in_threadpool(
        in_session,
        models_service.predict_images,
        storage=storage,
        owner=user.owner,
        model_id=raw.model_id or "",
        images=[models_service.PredictImage(file=name, data=data) for name, data in raw.images],
        candidates=models_service.parse_candidates(raw.candidates),
        top_k=5,
        settings=settings,
    )
    return result.model_dump(mode="json")
