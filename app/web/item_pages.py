"""Web pages and posts around one item and one dataset's files: the original image (full size, for the zoom view),
a decision from the item page, and the labels download (JSON, CSV, Label Studio) with the session's cookie."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Form, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from app.api.deps import SessionDep, SettingsDep, StorageDep
from app.db import get_sessionmaker
from app.services import items as items_service
from app.services import label_studio as label_studio_service
from app.services import labels as labels_service
from app.services import reviews
from app.web.security import CsrfUserDep, UserDep

router = APIRouter(prefix="/ui", include_in_schema=False)


def safe_back(value: str | None, dataset_id: str) -> str:
    """Where "Back to review" goes: the review page the item was opened from (its filters kept), else the dataset's
    review page. Only that dataset's review page is accepted (never another site)."""
    default = f"/ui/datasets/{dataset_id}/review"
    if value and (value == default or value.startswith(default + "?")) and "\n" not in value and "\r" not in value:
        return value
    return default


def _sha(owner, item_id: str) -> str:
    session = get_sessionmaker()()
    try:
        return items_service.get_item(session=session, owner=owner, item_id=item_id).sha256
    finally:
        session.close()


@router.get("/items/{item_id}/original")
async def original(item_id: str, user: UserDep, storage: StorageDep) -> Response:
    """The item's image as uploaded (owner-scoped; another team's item is a 404)."""
    sha = await run_in_threadpool(_sha, user.owner, item_id)
    data = await run_in_threadpool(storage.get, sha)
    headers = {"Cache-Control": "private, max-age=31536000, immutable", "ETag": f'"{sha}"'}
    return Response(data, media_type=items_service.media_type(data), headers=headers)


@router.post("/items/{item_id}/decide")
def decide(
    item_id: str,
    user: CsrfUserDep,
    session: SessionDep,
    label: Annotated[str, Form(min_length=1, max_length=500)],
    back: Annotated[str | None, Form(max_length=2000)] = None,
) -> Response:
    """The item page's tag buttons: assign one of the item's candidates (with history, as the review page does)."""
    (item,) = reviews.decide(
        session=session, owner=user.owner, item_ids=[item_id], action="assign", label=label, reviewer=user.reviewer
    )
    url = f"/ui/items/{item_id}?back={quote(safe_back(back, item.dataset_id), safe='')}"
    return RedirectResponse(url, status_code=303)


@router.get("/datasets/{dataset_id}/labels")
def download_labels(
    dataset_id: str,
    user: UserDep,
    session: SessionDep,
    settings: SettingsDep,
    format: Annotated[Literal["json", "csv", "label-studio"], Query()] = "json",
) -> Response:
    """The labels export of ``GET /datasets/{id}/labels`` for the signed-in team, as a download."""
    ext = {"json": "json", "csv": "csv", "label-studio": "label-studio.json"}[format]
    headers = {"Content-Disposition": f'attachment; filename="labels-{dataset_id}.{ext}"'}
    if format == "label-studio":
        chunks = label_studio_service.export_tasks(
            session=session,
            owner=user.owner,
            dataset_id=dataset_id,
            settings=settings,
            from_name="choice",
            to_name="image",
        )
        return StreamingResponse(chunks, media_type="application/json", headers=headers)
    export = labels_service.export_labels(session=session, owner=user.owner, dataset_id=dataset_id, fmt=format)
    return StreamingResponse(export.chunks, media_type=export.media_type, headers=headers)
