"""Datasets: create (JSON or multipart upload), add items, list, read, delete, items page, labels export."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from app.api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from app.api.openapi import BODY, COMMON, IMAGE_TYPES, UPLOAD, problems
from app.api.paging import CursorQuery, ItemCursorQuery, LimitQuery, page_limit
from app.api.routes.jobs import IDEMPOTENCY_KEY_PATTERN
from app.config import Settings, get_settings
from app.errors import FieldError, InvalidInput
from app.schemas import (
    DATASET_TEMPLATE_PATTERN,
    NAME_PATTERN,
    TAG_SCHEMA,
    DatasetCreate,
    DatasetCreated,
    DatasetDetail,
    DatasetList,
    ItemList,
    ItemsAdded,
)
from app.services import datasets as datasets_service
from app.services import items as items_service
from app.services import label_studio as label_studio_service
from app.services import labels as labels_service
from app.services import upload_keys
from app.uploads import RawUpload
from app.uploads.forms import read_multipart, require_multipart

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=COMMON)

#: A JSON list of tags inside a form field (``classes``): its content, stated with JSON Schema's content keywords.
CLASSES_FIELD = {
    "type": "string",
    "contentMediaType": "application/json",
    "contentSchema": {"type": "array", "items": TAG_SCHEMA, "uniqueItems": True},
    "description": 'JSON list of distinct tags, e.g. ["cat", "lynx"]. With an upload to an existing dataset, tags '
    "that are not classes yet are added to its classes (after the existing ones, in the order given).",
}
UPLOAD_FIELDS = {
    "type": "object",
    "additionalProperties": False,  # an unknown form field is a 422 naming it
    "properties": {
        "classes": CLASSES_FIELD,
        "manifest": {
            "type": "string",
            "format": "binary",
            "description": 'JSONL lines {"file", "candidates", "label"?}, CSV with a header file,candidates[,label] '
            '(candidates joined by "|"; "label" is a known tag, one of the candidates; docs/api.md), or a Label Studio '
            "JSON export (a list of tasks; docs/integrations.md).",
        },
        "manifest_format": {
            "type": "string",
            "enum": ["auto", "jsonl", "csv", "label-studio"],
            "default": "auto",
            "description": "auto: a manifest starting with `[` is a Label Studio export, else by file name / content.",
        },
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
        "archive": {
            "type": "string",
            "format": "binary",
            "description": "One zip of the images; it may hold the manifest too (manifest.jsonl / manifest.csv).",
        },
    },
}
#: The file parts' media types (OpenAPI ``encoding``): images and a zip (a manifest is JSONL or CSV text, told
#: apart by its file name or first line).
UPLOAD_ENCODING = {"images": {"contentType": IMAGE_TYPES}, "archive": {"contentType": "application/zip"}}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            # a manifest with `images`, or an `archive` (whose manifest may be inside it)
            "schema": {**UPLOAD_FIELDS, "anyOf": [{"required": ["manifest", "images"]}, {"required": ["archive"]}]},
            "encoding": UPLOAD_ENCODING,
        }
    },
}
CREATE_FIELDS = {
    **UPLOAD_FIELDS,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NAME_PATTERN},
        **UPLOAD_FIELDS["properties"],
        "prompt_template": {
            "type": "string",
            "maxLength": 500,
            "pattern": DATASET_TEMPLATE_PATTERN,
            "description": 'e.g. "a photo of a {}." (blank: none)',
        },
    },
    "required": ["name"],
    # classes come from `classes` or from the manifest's candidates
    "anyOf": [{"required": ["classes"]}, {"required": ["manifest"]}, {"required": ["archive"]}],
}
CREATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": DatasetCreate.model_json_schema()},
        "multipart/form-data": {"schema": CREATE_FIELDS, "encoding": UPLOAD_ENCODING},
    },
}
NOT_FOUND = problems({404: "no such dataset (or another owner's)"})
UPLOAD_CONFLICT = problems(
    {
        409: "a concurrent upload stored some of the same images first (or used the same Idempotency-Key); retry",
        422: "invalid input (each problem named in `errors`), or an Idempotency-Key used with another request",
    }
)
#: The ``Idempotency-Key`` header of the uploads (``app.services.upload_keys``), as ``POST /datasets/{id}/jobs``.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Same key + same upload: the stored answer (header `Idempotent-Replayed: true`), nothing stored "
        "twice; the key with another upload: 422. 1 to 200 visible ASCII characters (spaces inside).",
    ),
]


async def read_dataset_body(request: Request, settings: Annotated[Settings, Depends(get_settings)]):
    """The create body: a :class:`DatasetCreate` (JSON) or a :class:`RawUpload` (multipart)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            return DatasetCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = [
                FieldError(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"]) for e in exc.errors()
            ]
            raise InvalidInput(
                "; ".join(f"{e.field}: {e.message}" for e in errors),
                errors=[FieldError(field=e.field, message=f"{e.field}: {e.message}") for e in errors],
            ) from None
    return await read_upload_body(request, settings)


async def read_upload_body(request: Request, settings: Annotated[Settings, Depends(get_settings)]) -> RawUpload:
    require_multipart(request)
    return await read_multipart(request, settings)


@router.post(
    "",
    status_code=201,
    response_model=DatasetCreated,
    openapi_extra={"requestBody": CREATE_BODY},
    responses={**BODY, **UPLOAD, **UPLOAD_CONFLICT},
)
def create_dataset(
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    body: Annotated[DatasetCreate | RawUpload, Depends(read_dataset_body)],
    idempotency_key: IdempotencyKey = None,
) -> DatasetCreated | JSONResponse:
    """Create a dataset: JSON `{"name", "classes"}` (empty) or multipart with a manifest and images / a zip."""
    request_hash = upload_keys.fingerprint("create", None, body)
    prior = upload_keys.replay(session, owner, idempotency_key, request_hash)
    if prior is not None:
        return _replayed(prior)
    if isinstance(body, DatasetCreate):
        read = datasets_service.create_empty_dataset(session=session, owner=owner, dataset_in=body, settings=settings)
        created = DatasetCreated(**read.model_dump(), added=0, duplicates=[])
        if idempotency_key:  # an empty dataset: its record in a transaction of its own, right after
            upload_keys.remember(session, owner, idempotency_key, request_hash, created.id, created)
            session.commit()
        return created

    def remember(dataset_id: str, answer) -> None:
        upload_keys.remember(session, owner, idempotency_key, request_hash, dataset_id, answer)

    return datasets_service.create_dataset_from_upload(
        session=session, storage=storage, owner=owner, raw=body, settings=settings, remember=remember
    )


def _replayed(answer: dict) -> JSONResponse:
    """The stored answer of an Idempotency-Key used again with the same request."""
    return JSONResponse(answer, status_code=201, headers={"Idempotent-Replayed": "true"})


@router.get("", response_model=DatasetList)
def list_datasets(
    owner: OwnerDep, session: SessionDep, settings: SettingsDep, cursor: CursorQuery = None, limit: LimitQuery = None
) -> DatasetList:
    """A page of the owner's datasets, oldest first, with the `total` and the `next_cursor`."""
    return datasets_service.list_datasets(
        session=session, owner=owner, cursor=cursor, limit=page_limit(limit, settings)
    )


@router.get("/{dataset_id}", response_model=DatasetDetail, responses=NOT_FOUND)
def get_dataset(dataset_id: str, owner: OwnerDep, session: SessionDep) -> DatasetDetail:
    """One dataset with its counts (per-class candidates and labels, labelled, reviewed, needing review)."""
    return datasets_service.dataset_detail(session=session, owner=owner, dataset_id=dataset_id)


@router.delete("/{dataset_id}", status_code=204, responses=NOT_FOUND)
def delete_dataset(dataset_id: str, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> Response:
    """Delete a dataset and its items (its queued jobs are cancelled, running ones asked to stop)."""
    datasets_service.delete_dataset(session=session, storage=storage, owner=owner, dataset_id=dataset_id)
    return Response(status_code=204)


@router.post(
    "/{dataset_id}/items",
    status_code=201,
    response_model=ItemsAdded,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses={**NOT_FOUND, **BODY, **UPLOAD, **UPLOAD_CONFLICT},
)
def add_items(
    dataset_id: str,
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    raw: Annotated[RawUpload, Depends(read_upload_body)],
    idempotency_key: IdempotencyKey = None,
) -> ItemsAdded | JSONResponse:
    """Add a batch of items (all or nothing); images already in the dataset are reported as duplicates."""
    request_hash = upload_keys.fingerprint("items", dataset_id, raw)
    prior = upload_keys.replay(session, owner, idempotency_key, request_hash)
    if prior is not None:
        return _replayed(prior)

    def remember(stored_in: str, answer) -> None:
        upload_keys.remember(session, owner, idempotency_key, request_hash, stored_in, answer)

    return datasets_service.add_items(
        session=session,
        storage=storage,
        owner=owner,
        dataset_id=dataset_id,
        raw=raw,
        settings=settings,
        remember=remember,
    )


@router.get(
    "/{dataset_id}/items",
    response_model=ItemList,
    responses=problems({404: "no such dataset (or another owner's), or no item at the `cursor` (margin order)"}),
)
def list_items(
    dataset_id: str,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    cursor: ItemCursorQuery = None,
    limit: LimitQuery = None,
    needs_review: Annotated[bool | None, Query(description="Only items that do (true) / do not (false).")] = None,
    order: Annotated[
        items_service.ItemOrder, Query(description="`upload` order, or `margin` ascending (most doubtful first).")
    ] = "upload",
) -> ItemList:
    """A page of the dataset's items, with the `total` matching the filter; `needs_review=true&order=margin` is
    the review queue."""
    limit = page_limit(limit, settings)
    return items_service.list_items(
        session=session,
        owner=owner,
        dataset_id=dataset_id,
        settings=settings,
        cursor=cursor,
        limit=limit,
        needs_review=needs_review,
        order=order,
    )


@router.get(
    "/{dataset_id}/labels",
    responses={
        **NOT_FOUND,
        200: {
            "description": "the labels",
            "content": {"application/json": {}, "application/x-ndjson": {}, "text/csv": {}},
            "headers": {
                "Tagsift-Model-Id": {
                    "description": "The newest model whose tags the export holds (absent when none does).",
                    "schema": {"type": "string"},
                },
                "Tagsift-Job-Id": {"description": "That model's training job.", "schema": {"type": "string"}},
            },
        },
    },
)
def export_labels(
    dataset_id: str,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    format: Annotated[labels_service.LabelFormat, Query(description="json, jsonl, csv or label-studio")] = "json",
    from_name: Annotated[
        str, Query(min_length=1, max_length=200, description="label-studio: the project's <Choices name>.")
    ] = "choice",
    to_name: Annotated[
        str, Query(min_length=1, max_length=200, description="label-studio: the project's <Image name>.")
    ] = "image",
) -> Response:
    """Every item's disambiguated tag, confidence, margin and source, and the model and job that set it.

    JSON also names the export's models (`produced_by`, the newest as `model_id` / `job_id`); every format carries
    the newest in the `Tagsift-Model-Id` / `Tagsift-Job-Id` headers.

    `json` and `jsonl` are verbatim; in `csv`, a text cell starting with `=`, `+`, `-`, `@`, tab or CR gets a
    leading `'` so that spreadsheets do not evaluate it (CSV injection). `label-studio`: a JSON list of Label
    Studio tasks to import, a model's tag as a prediction, a reviewer's as an annotation (docs/integrations.md)."""
    ext = {"json": "json", "jsonl": "jsonl", "csv": "csv", "label-studio": "label-studio.json"}[format]
    headers = {"Content-Disposition": f'attachment; filename="labels-{dataset_id}.{ext}"'}
    # streamed in constant memory (app.services.streaming); a bad id or parameter is answered before any byte
    if format == "label-studio":
        chunks = label_studio_service.export_tasks(
            session=session, owner=owner, dataset_id=dataset_id, settings=settings, from_name=from_name, to_name=to_name
        )
        return StreamingResponse(chunks, media_type="application/json", headers=headers)
    export = labels_service.export_labels(session=session, owner=owner, dataset_id=dataset_id, fmt=format)
    if export.model_id:
        headers |= {"Tagsift-Model-Id": export.model_id, "Tagsift-Job-Id": export.job_id or ""}
    return StreamingResponse(export.chunks, media_type=export.media_type, headers=headers)
