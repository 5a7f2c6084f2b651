"""Audits: draw a random, stratified sample of a dataset's items and record a person's true tag of each
(``app.services.audits``). The shapes live here: ``app/schemas.py`` is at its size limit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import BaseModel, BeforeValidator, Field

from app.api.deps import OwnerDep, ReviewerDep, SessionDep
from app.api.openapi import BODY, COMMON, problems
from app.errors import NotFound
from app.schemas import _Input, _integral
from app.services import audits as audits_service

router = APIRouter(prefix="/datasets", tags=["audits"], responses=COMMON)


class AuditCreate(_Input):
    """Body of ``POST /datasets/{id}/audits`` (every field optional; an empty body takes the defaults)."""

    size: Annotated[int, Field(ge=1, le=audits_service.MAX_SIZE), BeforeValidator(_integral)] | None = Field(
        None,
        description=f"How many items to draw, 1 to {audits_service.MAX_SIZE} (at most the dataset's items). Default: "
        f"{audits_service.DEFAULT_MIN} items or {audits_service.DEFAULT_SHARE:.0%} of the dataset, whichever is "
        f"larger, at most {audits_service.MAX_SIZE}.",
    )
    seed: Annotated[int, Field(ge=0, le=audits_service.MAX_SEED), BeforeValidator(_integral)] | None = Field(
        None,
        description=f"0 to {audits_service.MAX_SEED}; the same seed on the same items draws the same sample. "
        "Default: a random seed (returned).",
    )


class AuditAnswer(_Input):
    """Body of ``POST /datasets/{id}/audits/current/answers``: the true tag of one item of the current audit."""

    item_id: str = Field(min_length=1, max_length=64)
    label: str = Field(
        min_length=1, max_length=500, description="Any class of the dataset (added to the item's candidates)."
    )


class AuditItemRead(BaseModel):
    """An item to audit: its image and candidates, never the model's tag, confidence or margin."""

    id: str
    file: str
    candidates: list[str]
    image_url: str


class AuditStratum(BaseModel):
    tag: str | None = Field(description="The items' tag when the sample was drawn (null: untagged).")
    items: int
    answered: int


class AuditRead(BaseModel):
    id: str
    dataset_id: str
    seed: int
    size: int
    population: int = Field(description="The dataset's items when the sample was drawn.")
    created_at: datetime
    answered: int
    total: int
    agreed: int = Field(description="Answers equal to the item's tag when the sample was drawn.")
    strata: list[AuditStratum]
    next: list[AuditItemRead] = Field(description="The next unanswered items, in the order they are asked.")


def audit_read(p: audits_service.AuditProgress) -> AuditRead:
    a = p.audit
    return AuditRead(
        id=a.id,
        dataset_id=a.dataset_id,
        seed=a.seed,
        size=a.size,
        population=a.population,
        created_at=a.created_at,
        answered=p.answered,
        total=p.total,
        agreed=p.agreed,
        strata=[AuditStratum(**s) for s in p.strata],
        next=[
            AuditItemRead(id=i.id, file=i.file, candidates=list(i.candidates), image_url=f"/items/{i.id}/image")
            for i in p.next_items
        ],
    )


PROBLEMS = problems({404: "no such dataset (or another owner's)"})


@router.post(
    "/{dataset_id}/audits",
    status_code=201,
    response_model=AuditRead,
    responses={**PROBLEMS, **BODY, **problems({409: "the dataset has no item"})},
)
def start_audit(
    dataset_id: str,
    owner: OwnerDep,
    reviewer: ReviewerDep,
    session: SessionDep,
    body: AuditCreate | None = Body(None),  # an optional body: none at all takes the defaults
) -> AuditRead:
    """Draw a new audit sample (stratified by the items' tags, seeded); it becomes the dataset's current audit."""
    body = body or AuditCreate()
    audits_service.start_audit(
        session=session, owner=owner, dataset_id=dataset_id, size=body.size, seed=body.seed, reviewer=reviewer
    )
    p = audits_service.progress(session=session, owner=owner, dataset_id=dataset_id)
    assert p is not None
    return audit_read(p)


@router.get(
    "/{dataset_id}/audits/current",
    response_model=AuditRead,
    responses={404: PROBLEMS[404] | {"description": "no such dataset, or it has no audit yet"}},
)
def current_audit(dataset_id: str, owner: OwnerDep, session: SessionDep) -> AuditRead:
    """The current audit: answered/total, per stratum, and the next items to ask (without the model's output)."""
    p = audits_service.progress(session=session, owner=owner, dataset_id=dataset_id)
    if p is None:
        raise NotFound(f"dataset {dataset_id[:64]}: no audit yet (POST /datasets/{{id}}/audits starts one)")
    return audit_read(p)


@router.post(
    "/{dataset_id}/audits/current/answers",
    response_model=AuditRead,
    responses={**PROBLEMS, **BODY, **problems({409: "the dataset has no audit"})},
)
def answer_audit(
    dataset_id: str, answer: AuditAnswer, owner: OwnerDep, reviewer: ReviewerDep, session: SessionDep
) -> AuditRead:
    """A person's true tag of one item of the current audit: a review decision with action "audit" (the item's tag
    becomes a reviewer tag; the web app's undo reverts it like any decision). Answers the audit's progress."""
    p = audits_service.answer(
        session=session,
        owner=owner,
        dataset_id=dataset_id,
        item_id=answer.item_id,
        label=answer.label,
        reviewer=reviewer,
    )
    return audit_read(p)
