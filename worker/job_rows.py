"""A job's rows: loading what it trains on (:func:`load_input`) and saving its result in one transaction fenced on
the run's lease (:func:`save_result`). The training set rule: an item with a reviewer label or a manifest label is
certain; a reviewer's label is never overwritten."""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import bindparam, or_, select, update

from app.config import get_settings
from app.db import session_scope
from app.models import Dataset, Item, Job, Model
from app.services.audits import audited_tags
from app.services.datasets import lock_dataset, refresh_review_count
from vocab import JobStatus
from worker.job_run import JobRun, LeaseLost
from worker.leases import utcnow

log = logging.getLogger("worker.training")


class JobInputError(ValueError):
    """The job's rows cannot be trained on (no dataset, no items, bad candidate sets)."""


@dataclasses.dataclass
class ItemRow:
    id: str
    file: str
    sha256: str
    candidates: list[str]
    certain_label: str | None  # reviewer label or manifest label: the item's candidate set is {this}
    reviewer: bool  # a reviewer labelled it: never overwritten


@dataclasses.dataclass
class JobInput:
    job_id: str
    owner_id: str
    dataset_id: str
    params: dict
    classes: list[str]
    prompt_template: str | None
    items: list[ItemRow]
    audited: dict[int, str] = dataclasses.field(default_factory=dict)  # item index -> tag a person gave in the audit


def load_input(job_id: str) -> JobInput:
    with session_scope() as session:
        job = session.get(Job, job_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            raise JobInputError("the job's dataset no longer exists")
        classes = list(dataset.classes)
        known = set(classes)
        items = []
        rows = session.execute(
            select(Item.id, Item.file, Item.sha256, Item.candidates, Item.given_label, Item.label, Item.label_source)
            .where(Item.dataset_id == dataset.id)
            .order_by(Item.seq)
        ).all()
        for row in rows:
            reviewer = row.label_source == "reviewer" and row.label in known
            certain = row.label if reviewer else (row.given_label if row.given_label in known else None)
            items.append(ItemRow(row.id, row.file, row.sha256, list(row.candidates), certain, reviewer))
        if not items:
            raise JobInputError(f"dataset {dataset.id} has no items to train on")
        params = dict(job.params or {})
        answers = audited_tags(session, dataset.id)  # the current audit's answers: the estimate's yardstick
        audited = {i: answers[it.id] for i, it in enumerate(items) if answers.get(it.id) in known}
        return JobInput(job.id, job.owner_id, dataset.id, params, classes, dataset.prompt_template, items, audited)


def label_rows(job: JobInput, result, review_confidence: float) -> list[dict]:
    """One update per item that no reviewer labelled; it needs review when its calibrated confidence (the
    probability that its label is right, ml/quality.py) is below ``review_confidence``."""
    return [
        {
            "_id": it.id,
            "label": job.classes[result.labels[i]],
            "confidence": result.confidence[i],
            "margin": result.margin[i],
            "needs_review": bool(result.confidence[i] < review_confidence),
            "probs": result.probs[i] if getattr(result, "probs", None) else None,
        }
        for i, it in enumerate(job.items)
        if not it.reviewer
    ]


def job_metrics(job: JobInput, plan, result, rows: list[dict], backbone_id: str, device: str, attempt: int) -> dict:
    """The job's metrics (on its row and its model's) from ml's plan and result and the label rows."""
    history, cfg = result.history, plan.config.train
    return {
        "backbone": get_settings().backbone,
        "backbone_id": backbone_id,
        "device": device,
        "method": cfg.method,
        "loss": cfg.loss,
        "epochs": cfg.epochs,
        "final_loss": history[-1].loss if history else None,
        # the two terms of the final loss apart (its scale follows L_PLL's, so the sum is no progress measure)
        "final_pll_loss": history[-1].pll_loss if history else None,
        "final_align_loss": history[-1].align_loss if history else None,
        "train_seconds": round(result.train_seconds, 3),
        "items": len(job.items),
        "train_items": result.train_items,
        "certain_items": sum(plan.certain),
        "labelled_items": len(rows),
        "needs_review": sum(r["needs_review"] for r in rows),
        "mean_confidence": round(sum(r["confidence"] for r in rows) / len(rows), 4) if rows else None,
        "mean_margin": round(sum(r["margin"] for r in rows) / len(rows), 4) if rows else None,
        "attempt": attempt,
        "knn_vote": result.knn,
        "handcrafted_mix": plan.config.handcrafted_mix,
        # how good the labels are without true labels (ml/quality.py, docs/results.md "Quality report"); a job
        # has no true labels, so there is no train_acc: the held-out accuracy (quality.holdout) takes its place
        "quality": {**result.quality, "needs_review": sum(r["needs_review"] for r in rows)} if result.quality else None,
        "review_confidence": get_settings().review_confidence,
    }


def save_result(run: JobRun, job: JobInput, cfg, backbone_id: str, model_id: str, metrics, artifacts, rows) -> str:
    # --- save: one transaction, fenced on our lease ---
    now = utcnow()
    progress = {**run.progress, "stage": "succeeded", "epoch": cfg.epochs, "epochs": cfg.epochs, "fraction": 1.0}

    def save_once() -> None:
        with session_scope() as session:
            # the dataset's row first (as a reviewer's decision or a dataset delete takes it): the review count
            # written below stays exact, and the locks come in one order
            lock_dataset(session, job.dataset_id)
            run.transition(  # stamped on the database's clock, as every lease timestamp (app/dbclock.py)
                session,
                JobStatus.SUCCEEDED,
                events=[("stage", {"stage": "succeeded", "model_id": model_id})],
                model_id=model_id,
                metrics=metrics,
                progress=progress,
            )
            session.add(
                Model(
                    id=model_id,
                    owner_id=job.owner_id,
                    dataset_id=job.dataset_id,
                    job_id=job.job_id,
                    backbone=backbone_id,
                    method=cfg.method,
                    classes=job.classes,
                    metrics=metrics,
                    artifacts=artifacts,
                )
            )
            session.flush()
            if rows:
                items = Item.__table__
                stmt = (
                    update(items)
                    .where(items.c.id == bindparam("_id"))
                    .where(or_(items.c.label_source.is_(None), items.c.label_source != "reviewer"))
                    .values(
                        label=bindparam("label"),
                        confidence=bindparam("confidence"),
                        margin=bindparam("margin"),
                        needs_review=bindparam("needs_review"),
                        probs=bindparam("probs"),
                        label_source="model",
                        model_id=model_id,
                        updated_at=now,
                    )
                )
                session.connection().execute(stmt, rows)
                refresh_review_count(session, job.dataset_id)
            # the dataset's latest quality report (a live refit replaces it: app.services.refits)
            session.execute(update(Dataset).where(Dataset.id == job.dataset_id).values(quality=metrics.get("quality")))

    try:
        run.transaction("save", save_once)
    except LeaseLost:
        if not _saved(job.job_id, model_id):  # a retried save whose first commit went through but was not answered
            raise
    run.progress = progress
    log.info("job %s: succeeded, model %s", job.job_id, model_id)
    return "succeeded"


def _saved(job_id: str, model_id: str) -> bool:
    with session_scope() as session:
        job = session.get(Job, job_id)
        return job is not None and job.status == "succeeded" and job.model_id == model_id
