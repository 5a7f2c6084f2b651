"""Models: read one, list, and export the deployable zip."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.api.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from app.api.openapi import COMMON, problems
from app.api.paging import CursorQuery, LimitQuery, page_limit
from app.schemas import ModelList, ModelRead
from app.services import models as models_service

router = APIRouter(prefix="/models", tags=["models"], responses=COMMON)

NOT_FOUND = problems({404: "no such model (or another owner's)"})
PROBLEMS = {**NOT_FOUND, **problems({409: "the model's artifacts are missing"})}


@router.get("", response_model=ModelList, responses=problems({404: "no such dataset (or another owner's)"}))
def list_models(
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    cursor: CursorQuery = None,
    limit: LimitQuery = None,
    dataset_id: Annotated[str | None, Query(max_length=64, description="Only the models of this dataset.")] = None,
) -> ModelList:
    """A page of the owner's models, oldest first, with the `total` and the `next_cursor`."""
    return models_service.list_models(
        session=session,
        owner=owner,
        settings=settings,
        cursor=cursor,
        limit=page_limit(limit, settings),
        dataset_id=dataset_id,
    )


@router.get("/{model_id}", response_model=ModelRead, responses=NOT_FOUND)
def get_model(model_id: str, owner: OwnerDep, session: SessionDep, settings: SettingsDep) -> ModelRead:
    """A model: backbone, method, classes, metrics, its job and artifacts."""
    return models_service.read_model(session=session, owner=owner, model_id=model_id, settings=settings)


@router.get(
    "/{model_id}/export",
    response_class=FileResponse,
    responses={**PROBLEMS, 200: {"description": "zip", "content": {"application/zip": {}}}},
)
def export_model(
    model_id: str,
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    merged: Annotated[
        bool,
        Query(
            description="One model.onnx (image -> logits) instead of the backbone's tower.onnx and the model's"
            " head.npz; models stored before towers were shared have one model.onnx either way."
        ),
    ] = False,
) -> FileResponse:
    """A zip that runs on its own: the image tower (tower.onnx, tower.json) and this model's head (head.npz), or
    with `merged=true` one model.onnx; classes.json, preprocess.json (every preprocessing step), model_card.md,
    model.json and predict.py (scores like /predict with onnxruntime, NumPy and Pillow only, for either layout)."""
    path = models_service.export_model(
        session=session, storage=storage, owner=owner, model_id=model_id, settings=settings, merged=merged
    )
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"tagsift-model-{model_id}.zip",
        background=BackgroundTask(os.unlink, path),
    )
