"""Queries behind the web app's pages: dataset summaries with counts, the filtered review grid, a dataset's jobs.

Owner-scoped like every service: a dataset of another owner is a 404 (``get_dataset``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.models import Dataset, Item, Job, Model, Owner, score_key
from app.services.datasets import get_dataset
from vocab import JobStatus

ReviewSort = Literal["margin", "confidence"]


@dataclass
class DatasetSummary:
    dataset: Dataset
    items: int
    labelled: int
    reviewed: int
    needs_review: int
    estimated_accuracy: float | None  # from the latest finished job's quality report, when it has one


def job_quality(job: Job) -> dict | None:
    """The job's quality report (``metrics.quality``), when the job has one."""
    quality = (job.metrics or {}).get("quality")
    return quality if isinstance(quality, dict) and quality else None


def latest_quality(*, session: Session, owner: Owner, dataset: Dataset) -> dict | None:
    """The dataset's latest quality report: the dataset's own (``datasets.quality``, kept by refits, where the
    schema has it) or else its latest succeeded job's."""
    own = getattr(dataset, "quality", None)
    if isinstance(own, dict) and own:
        return own
    jobs = session.scalars(
        select(Job)
        .where(Job.owner_id == owner.id, Job.dataset_id == dataset.id, Job.status == "succeeded")
        .order_by(Job.finished_at.desc().nulls_last(), Job.created_at.desc())
    )
    return next((q for q in map(job_quality, jobs) if q), None)


def _counts(session: Session, owner: Owner, dataset_id: str | None = None) -> dict[str, tuple[int, int, int, int]]:
    stmt = (
        select(
            Item.dataset_id,
            func.count(),
            func.sum(case((Item.label.is_not(None), 1), else_=0)),
            func.sum(case((Item.label_source == "reviewer", 1), else_=0)),
            func.sum(case((Item.needs_review.is_(True), 1), else_=0)),
        )
        .join(Dataset, Dataset.id == Item.dataset_id)
        .where(Dataset.owner_id == owner.id)
        .group_by(Item.dataset_id)
    )
    if dataset_id is not None:
        stmt = stmt.where(Item.dataset_id == dataset_id)
    return {
        row[0]: (int(row[1]), int(row[2] or 0), int(row[3] or 0), int(row[4] or 0)) for row in session.execute(stmt)
    }


def _accuracy(session: Session, owner: Owner, dataset_ids: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    if not dataset_ids:
        return out
    jobs = session.scalars(
        select(Job)
        .where(Job.owner_id == owner.id, Job.dataset_id.in_(dataset_ids), Job.status == JobStatus.SUCCEEDED)
        .order_by(Job.finished_at.desc().nulls_last(), Job.created_at.desc())
    )
    for job in jobs:
        if job.dataset_id in out:
            continue
        quality = job_quality(job)
        value = quality.get("estimated_accuracy") if quality else None
        if isinstance(value, int | float):
            out[job.dataset_id] = float(value)
    return out


def dataset_summaries(*, session: Session, owner: Owner) -> list[DatasetSummary]:
    """The owner's datasets, newest first, with their counts."""
    datasets = list(
        session.scalars(
            select(Dataset).where(Dataset.owner_id == owner.id).order_by(Dataset.created_at.desc(), Dataset.id)
        )
    )
    counts = _counts(session, owner)
    accuracy = _accuracy(session, owner, [d.id for d in datasets])
    return [DatasetSummary(d, *counts.get(d.id, (0, 0, 0, 0)), estimated_accuracy=accuracy.get(d.id)) for d in datasets]


def dataset_summary(*, session: Session, owner: Owner, dataset_id: str) -> DatasetSummary:
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    counts = _counts(session, owner, dataset.id).get(dataset.id, (0, 0, 0, 0))
    return DatasetSummary(dataset, *counts, estimated_accuracy=_accuracy(session, owner, [dataset.id]).get(dataset.id))


@dataclass(frozen=True)
class ReviewFilter:
    needs_review: bool | None = True
    tag: str | None = None
    source: Literal["model", "reviewer", "none"] | None = None
    model_id: str | None = None
    sort: ReviewSort = "margin"
    file: str | None = None  # part of the file name, any case


def review_items(
    *, session: Session, owner: Owner, dataset_id: str, flt: ReviewFilter, offset: int, limit: int
) -> tuple[Dataset, list[Item], int]:
    """(dataset, one page of items, how many match): ordered by margin (or confidence) ascending, most doubtful
    first, ties by upload order."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    stmt = select(Item).where(Item.dataset_id == dataset.id)
    if flt.needs_review is not None:
        stmt = stmt.where(Item.needs_review == flt.needs_review)
    if flt.tag:
        stmt = stmt.where(Item.label == flt.tag)
    if flt.source == "none":
        stmt = stmt.where(Item.label_source.is_(None))
    elif flt.source:
        stmt = stmt.where(Item.label_source == flt.source)
    if flt.model_id:
        stmt = stmt.where(Item.model_id == flt.model_id)
    if flt.file:
        pattern = "%" + flt.file.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(func.lower(Item.file).like(pattern, escape="\\"))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    # the order of the ix_items_review_margin / ix_items_review_confidence indexes (app.models): never a sort of the
    # dataset, though a page number (OFFSET) still walks the rows before its page in index order
    key = score_key(Item.confidence if flt.sort == "confidence" else Item.margin)
    items = list(session.scalars(stmt.order_by(key, Item.seq).offset(offset).limit(limit)))
    return dataset, items, total


def dataset_jobs(*, session: Session, owner: Owner, dataset_id: str) -> list[Job]:
    """The dataset's jobs, newest first."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.owner_id == owner.id, Job.dataset_id == dataset_id)
            .order_by(Job.created_at.desc(), Job.id)
        )
    )


def dataset_models(*, session: Session, owner: Owner, dataset_id: str) -> list[Model]:
    return list(
        session.scalars(
            select(Model)
            .where(Model.owner_id == owner.id, Model.dataset_id == dataset_id)
            .order_by(Model.created_at.desc())
        )
    )
