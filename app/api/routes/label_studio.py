"""Label Studio's ML backend protocol, one backend per dataset: ``/label-studio/{dataset_id}/{health,setup,predict,
webhook}`` (see ``app.services.label_studio``, ``app.services.label_studio_webhook`` and docs/integrations.md for
what to type into Label Studio).

Auth: HTTP Basic with the API key as the password (Label Studio's "Basic Authentication" of a model connection),
or ``Authorization: Bearer <key>`` (e.g. the header of the project's webhook).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from app.api.deps import BasicOrBearerOwnerDep, SettingsDep, StorageDep
from app.api.openapi import BODY, COMMON, problems
from app.db import in_session
from app.errors import FieldError, InvalidInput
from app.jsonread import read_field
from app.schemas import OUTSIDE_ID_SCHEMA
from app.services import label_studio as ls_service
from app.services import label_studio_webhook

router = APIRouter(prefix="/label-studio/{dataset_id}", tags=["label-studio"], responses=COMMON)

NOT_FOUND = problems({404: "no such dataset (or another owner's)"})
PREDICT_PROBLEMS = problems(
    {
        404: "no such dataset (or another owner's)",
        409: "the dataset has no trained model yet, or the model's artifacts are missing",
        422: "a task's image is missing, unreadable or not allowed to be fetched (each task named in `errors`)",
    }
)


def _body(properties: dict[str, Any], description: str, required: list[str], **extra: Any) -> dict[str, Any]:
    """A JSON-object request body as Label Studio sends it (other keys are allowed and ignored)."""
    schema = {"type": "object", "description": description, "properties": properties, "required": required, **extra}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_CONFIG = {
    "type": "string",
    "minLength": 1,
    "maxLength": ls_service.MAX_LABEL_CONFIG,
    "description": "The project's labeling config (XML) with a <Choices> on an <Image>.",
}
_ANNOTATION_EVENTS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
SETUP_BODY = _body(
    {
        "project": {"type": "string", "description": "<project id>.<created timestamp>"},
        "schema": _CONFIG,
        "hostname": {"type": "string", "description": "Label Studio's base URL."},
        "access_token": {"type": "string", "description": "Its API token (used to read task images)."},
        "extra_params": {"description": "Ignored."},
    },
    "Label Studio's /setup request.",
    ["schema"],
)
PREDICT_BODY = _body(
    {
        "tasks": {
            "type": "array",
            "items": {"type": "object"},
            "minItems": 1,
            "maxItems": ls_service.MAX_TASKS,
            "description": "Label Studio tasks (`data.image`).",
        },
        "label_config": _CONFIG,
        "project": {"type": "string"},
        "params": {"description": "Ignored."},
    },
    "Label Studio's /predict request.",
    ["tasks", "label_config"],
)
WEBHOOK_BODY = _body(
    {
        "action": {
            "type": "string",
            "minLength": 1,
            "description": "ANNOTATION_CREATED, ANNOTATION_UPDATED, ANNOTATIONS_DELETED, START_TRAINING, ...",
        },
        "annotation": {"type": "object"},
        "annotations": {
            "type": "array",
            "description": "ANNOTATIONS_DELETED: the deleted annotations, by id",
            "items": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {
                        "anyOf": [
                            {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
                            OUTSIDE_ID_SCHEMA,
                        ]
                    }
                },
            },
        },
        "task": {"type": "object"},
        "project": {"type": "object"},
    },
    "A Label Studio webhook event (an annotation event carries the annotation and its task; a deletion, the ids of"
    " the deleted annotations).",
    ["action"],
    anyOf=[
        {"properties": {"action": {"not": {"enum": [*_ANNOTATION_EVENTS, "ANNOTATIONS_DELETED"]}}}},
        {"properties": {"action": {"enum": _ANNOTATION_EVENTS}}, "required": ["annotation", "task"]},
        {"properties": {"action": {"enum": ["ANNOTATIONS_DELETED"]}}, "required": ["annotations"]},
    ],
)


async def _json_object(request: Request) -> dict[str, Any]:
    body = read_field(await request.body(), field="body")
    if not isinstance(body, dict):
        raise InvalidInput("body: a JSON object", errors=[FieldError(field="body", message="body: a JSON object")])
    return body


JsonBody = Annotated[dict[str, Any], Depends(_json_object)]


@router.get("/health", responses=NOT_FOUND)
async def health(dataset_id: str, owner: BasicOrBearerOwnerDep) -> dict:
    """Label Studio's health check: `{"status": "UP", "model_class", "model_version"}`."""
    return await run_in_threadpool(in_session, ls_service.health, owner=owner, dataset_id=dataset_id)


@router.post("/setup", responses={**NOT_FOUND, **BODY}, openapi_extra={"requestBody": SETUP_BODY})
async def setup(dataset_id: str, owner: BasicOrBearerOwnerDep, settings: SettingsDep, body: JsonBody) -> dict:
    """Label Studio's setup: checks the project's labeling config; `model_version` is the dataset's newest model."""
    return await run_in_threadpool(
        in_session, ls_service.setup, owner=owner, dataset_id=dataset_id, body=body, settings=settings
    )


@router.post("/predict", responses={**PREDICT_PROBLEMS, **BODY}, openapi_extra={"requestBody": PREDICT_BODY})
async def predict(
    dataset_id: str, owner: BasicOrBearerOwnerDep, settings: SettingsDep, storage: StorageDep, body: JsonBody
) -> dict:
    """`{"tasks": [...]}` -> `{"results": [...]}`: one prediction per task, in order (the top choice and its score)."""
    return await run_in_threadpool(
        in_session,
        ls_service.predict,
        storage=storage,
        owner=owner,
        dataset_id=dataset_id,
        body=body,
        settings=settings,
    )


@router.post(
    "/webhook",
    status_code=201,
    responses={
        **problems({404: "no such dataset (or another owner's)", 409: "START_TRAINING: the dataset cannot train"}),
        **BODY,
        200: {
            "description": "annotations deleted (the items whose tags were undone, and those kept because decided"
            " since), or an event tagsift does not use (ignored, with the reason)"
        },
    },
    openapi_extra={"requestBody": WEBHOOK_BODY},
)
async def webhook(
    dataset_id: str, request: Request, owner: BasicOrBearerOwnerDep, settings: SettingsDep, body: JsonBody
) -> JSONResponse:
    """Project events: ANNOTATION_CREATED/UPDATED (one choice) -> the item's reviewer tag; ANNOTATIONS_DELETED -> the
    tags those annotations set are undone (unless decided again since); START_TRAINING -> a job."""
    status, payload = await run_in_threadpool(
        in_session,
        label_studio_webhook.webhook,
        owner=owner,
        reviewer=request.state.reviewer,  # the API key's id and name (app.api.deps.owner_for)
        dataset_id=dataset_id,
        body=body,
        settings=settings,
    )
    return JSONResponse(payload, status_code=status)
