"""Live refits of a dataset (docs/architecture.md, Live refit): their records and the state the review page polls."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import OwnerDep, SessionDep
from app.api.openapi import COMMON, problems
from app.services import refits as refits_service
from app.services.datasets import get_dataset

router = APIRouter(tags=["datasets"], responses=COMMON)


@router.get("/datasets/{dataset_id}/refits", responses=problems({404: "no such dataset (or another owner's)"}))
def list_refits(
    dataset_id: str,
    owner: OwnerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """The dataset's live refits, newest first (status, the decisions each read, items changed, seconds, the model
    revision it stored, and for a failed one what happened and what to do), with the live state the review page
    shows (the latest refit, the estimate)."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    refits = refits_service.list_refits(session, dataset.id, limit=limit)
    return {
        "live": refits_service.live_state(session, dataset),
        "refits": [refits_service.refit_read(r) for r in refits],
        "quality_series": refits_service.quality_series(session, dataset.id),
    }
