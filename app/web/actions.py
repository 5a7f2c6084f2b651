"""JSON calls made by the pages' scripts (cookie session + ``X-CSRF-Token``): uploads, review decisions, undo,
job progress and predictions. Errors are problem+json, as in the API, so the pages show the same messages."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from app.api.deps import SessionDep, SettingsDep, StorageDep
from app.api.errors import FieldError, InvalidInput
from app.db import in_session
from app.models import Item
from app.services import datasets as datasets_service
from app.services import jobs as jobs_service
from app.services import models as models_service
from app.services import reviews
from app.uploads import read_multipart, read_predict_form, require_multipart
from app.web.security import CsrfUserDep, UserDep

router = APIRouter(prefix="/ui/api", include_in_schema=False)


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
    """Assign a tag to (or accept the model's tag of) one or more items; each decision goes to the history."""
    if decision.action == "assign" and not decision.label:
        raise InvalidInput("label: required to assign", errors=[FieldError(field="label", message="label: required")])
    items = reviews.decide(
        session=session,
        owner=user.owner,
        item_ids=decision.items,
        action=decision.action,
        label=decision.label,
        reviewer=user.reviewer,
        add_to_candidates=True,  # the annotator picked this tag from the dataset's classes on purpose
    )
    return {"items": [item_state(i) for i in items]}


@router.post("/items/{item_id}/undo")
def undo(item_id: str, user: CsrfUserDep, session: SessionDep) -> dict:
    """Undo the item's latest decision (its previous tag, source and model come back)."""
    return item_state(reviews.undo_last(session=session, owner=user.owner, item_id=item_id, reviewer=user.reviewer))


@router.get("/jobs/{job_id}")
def job_progress(
    job_id: str, user: UserDep, session: SessionDep, after: Annotated[int | None, Query(ge=0)] = None
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
