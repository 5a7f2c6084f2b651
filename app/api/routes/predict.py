"""Predictions with the exported ONNX classifier (ONNX Runtime in the API process)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from app.api.deps import OwnerDep, SettingsDep, StorageDep
from app.api.openapi import BODY, COMMON, IMAGE_TYPES, UPLOAD, problems
from app.db import in_session
from app.errors import ApiError, FieldError, InvalidInput
from app.schemas import PredictResponse
from app.services import models as models_service
from app.uploads.forms import RawPredict, read_predict_form

router = APIRouter(prefix="/predict", tags=["predict"], responses=COMMON)

PROBLEMS = problems(
    {
        404: "no such model / item (or another owner's)",
        409: "the model's artifacts are missing",
        422: "invalid input: bad image, unknown candidates, ... (each named in `errors`)",
    }
)
PREDICT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["model_id", "image"],
                "additionalProperties": False,  # an unknown form field is a 422 naming it
                "properties": {
                    "model_id": {"type": "string", "minLength": 1, "maxLength": 64},
                    "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1},
                    "candidates": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "oneOf": [
                                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                {
                                    "type": "array",
                                    "items": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                    "minItems": 1,
                                },
                            ]
                        },
                        "description": 'JSON list of tags for every image, or one list per image: ["cat", "lynx"]',
                    },
                    "top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
                },
            },
            "encoding": {"image": {"contentType": IMAGE_TYPES}},
        }
    },
}


async def _predict_form(request: Request, settings: SettingsDep) -> RawPredict:
    try:
        return await read_predict_form(request, settings)
    except ApiError as exc:
        # the form parser stops one file past the limit and names its own count ("Maximum number of files is 65")
        if exc.code == "malformed_multipart" and "Maximum number of files" in exc.detail:
            limit = settings.max_predict_images
            message = (
                f"image: more than {limit} images, over the limit of {limit} per request (TAGSIFT_MAX_PREDICT_IMAGES)"
            )
            raise InvalidInput(message, errors=[FieldError(field="image", message=message)]) from None
        raise


# The handlers are async and do their blocking part (database, decode, ONNX Runtime) in ONE thread-pool call:
# a sync handler with a session dependency costs three thread hops per request, a noticeable share of a
# few-millisecond prediction.


@router.get("", response_model=PredictResponse, responses=PROBLEMS)
async def predict_item(
    owner: OwnerDep,
    storage: StorageDep,
    settings: SettingsDep,
    model_id: Annotated[str, Query(max_length=64)],
    item_id: Annotated[str, Query(max_length=64)],
    top_k: Annotated[int, Query(ge=1, le=1000)] = 5,
    restrict_to_candidates: Annotated[bool, Query(description="Score only the item's candidates.")] = True,
) -> PredictResponse:
    """Predict a stored item's tag with a model (by default among the item's candidates)."""
    return await run_in_threadpool(
        in_session,
        models_service.predict_item,
        storage=storage,
        owner=owner,
        model_id=model_id,
        item_id=item_id,
        top_k=top_k,
        restrict_to_candidates=restrict_to_candidates,
        settings=settings,
    )


@router.post(
    "",
    response_model=PredictResponse,
    responses={**PROBLEMS, **BODY, **UPLOAD},
    openapi_extra={"requestBody": PREDICT_BODY},
)
async def predict_images(
    owner: OwnerDep,
    storage: StorageDep,
    settings: SettingsDep,
    raw: Annotated[RawPredict, Depends(_predict_form)],
) -> PredictResponse:
    """Predict uploaded images; `candidates` restricts the answer, `top_k` sets how many scores come back."""
    top_k = 5
    if raw.top_k is not None and raw.top_k.strip():
        try:
            top_k = int(raw.top_k)
        except ValueError:
            top_k = 0
        if not 1 <= top_k <= 1000:
            raise InvalidInput(
                "top_k: an integer from 1 to 1000", errors=[FieldError(field="top_k", message="1 to 1000")]
            )
    return await run_in_threadpool(
        in_session,
        models_service.predict_images,
        storage=storage,
        owner=owner,
        model_id=raw.model_id or "",
        images=[models_service.PredictImage(file=name, data=data) for name, data in raw.images],
        candidates=models_service.parse_candidates(raw.candidates),
        top_k=top_k,
        settings=settings,
    )
