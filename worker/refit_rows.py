"""A live refit's rows: the claim, the read and the fenced save (``worker.refit`` runs them).

Fencing: the read records the dataset's ``decision_seq`` and the newest review id of its items. The save takes the
dataset's row lock (every decision takes it first, ``app.services.reviews``) and then
- writes nothing but ``stale`` when the dataset's latest model is no longer the one the refit started from (a job
  or another refit saved since);
- never writes an item a reviewer decided (``label_source = 'reviewer'``, checked in the UPDATE itself) nor one
  with a decision after the read (an undo included: every decision adds an ``item_reviews`` row, whose ids grow
  while the dataset's lock is held, so "after the read" is "id above the one read").
Items are written in bulk (PostgreSQL: one ``UPDATE ... FROM unnest(arrays)``; SQLite: one executemany).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
from sqlalchemy import Boolean, bindparam, case, func, or_, select, text, update
from sqlalchemy.types import JSON

from app.config import get_settings
from app.db import session_scope
from app.models import Dataset, Item, ItemReview, Model, Refit, new_id, utcnow
from app.services.datasets import lock_dataset, refresh_review_count
from app.services.refits import latest_model
from app.services.webhooks import emit
from app.storage import get_storage

log = logging.getLogger("worker.refit")


@dataclasses.dataclass
class RefitInput:
    refit_id: str
    revision: int
    dataset_id: str
    owner_id: str
    classes: list[str]
    base: dict  # the base model's id, backbone, method, metrics and artifacts
    backbone_id: str
    head_sha: str
    item_ids: list[str]
    shas: list[str]
    labels: list[str | None]
    scores: np.ndarray  # (N, 2) the stored confidence and margin (NaN: none)
    flags: np.ndarray  # (N,) the stored needs_review
    reviewer: np.ndarray  # (N,) bool: a reviewer decided it (never written)
    mask: np.ndarray  # (N, K) bool candidate sets (a certain tag within its set)
    targets: np.ndarray  # (N,) int64: the certain tag's index, -1 for the rest
    audited_rows: set[int]
    decision_seq: int
    max_review_id: int


def claim(refit_id: str) -> bool:
    with session_scope() as session:
        done = session.execute(
            update(Refit)
            .where(Refit.id == refit_id, Refit.status == "queued")
            .values(status="running", started_at=utcnow())
        )
        return done.rowcount == 1


def fail(refit_id: str, code: str, message: str) -> None:
    with session_scope() as session:
        session.execute(
            update(Refit)
            .where(Refit.id == refit_id)
            .values(status="failed", error_code=code, error=message, finished_at=utcnow())
        )


def _audited(session, dataset_id: str) -> dict[str, str]:
    """The audit sample's answers (``app.services.audits``, CONTRACTS.md), when that module is there."""
    try:
        from app.services.audits import audited_tags
    except ImportError:
        return {}
    return audited_tags(session, dataset_id)


def read_input(refit_id: str) -> RefitInput | None:
    """Everything the refit reads, from one snapshot (None when the dataset has no model)."""
    with session_scope() as session:
        refit = session.get(Refit, refit_id)
        dataset = session.get(Dataset, refit.dataset_id)
        model = latest_model(session, dataset.id)
        if model is None or "head.npz" not in (model.artifacts or {}):
            return None
        refit.base_model_id = model.id
        seq = dataset.decision_seq
        max_review = session.scalar(
            select(func.max(ItemReview.id))
            .join(Item, Item.id == ItemReview.item_id)
            .where(Item.dataset_id == dataset.id)
        )
        rows = session.execute(
            select(
                Item.id,
                Item.sha256,
                Item.candidates,
                Item.given_label,
                Item.label,
                Item.label_source,
                Item.confidence,
                Item.margin,
                Item.needs_review,
            )
            .where(Item.dataset_id == dataset.id)
            .order_by(Item.seq)
        ).all()
        audited = _audited(session, dataset.id)
        classes = list(dataset.classes)
        base = {
            "id": model.id,
            "backbone": model.backbone,
            "method": model.method,
            "metrics": dict(model.metrics or {}),
            "artifacts": dict(model.artifacts),
        }
        data = _arrays(refit, dataset, classes, rows, audited)
        session.commit()
    backbone_id = base["metrics"].get("backbone_id") or base["backbone"]
    return RefitInput(
        refit_id=refit_id,
        revision=refit.revision,
        dataset_id=dataset.id,
        owner_id=dataset.owner_id,
        classes=classes,
        base=base,
        backbone_id=backbone_id,
        head_sha=base["artifacts"]["head.npz"],
        decision_seq=int(seq),
        max_review_id=int(max_review or 0),
        **data,
    )


def _arrays(refit, dataset, classes, rows, audited: dict[str, str]) -> dict:
    index = {c: k for k, c in enumerate(classes)}
    n, k = len(rows), len(classes)
    mask = np.zeros((n, k), dtype=bool)
    targets = np.full(n, -1, dtype=np.int64)
    reviewer = np.zeros(n, dtype=bool)
    audited_rows = set()
    for i, row in enumerate(rows):
        for c in row.candidates:
            if c in index:
                mask[i, index[c]] = True
        reviewer[i] = row.label_source == "reviewer" and row.label in index
        tag = row.label if reviewer[i] else audited.get(row.id, row.given_label)
        if row.id in audited and audited[row.id] in index:
            audited_rows.add(i)
        if tag in index:
            targets[i] = index[tag]
            mask[i, index[tag]] = True
        if not mask[i].any():  # no known candidate: every class (nothing to restrict it to)
            mask[i] = True
    return {
        "item_ids": [r.id for r in rows],
        "shas": [r.sha256 for r in rows],
        "labels": [r.label for r in rows],
        "scores": np.array(
            [
                (np.nan if r.confidence is None else r.confidence, np.nan if r.margin is None else r.margin)
                for r in rows
            ],
            dtype=np.float64,
        ).reshape(-1, 2),
        "flags": np.array([bool(r.needs_review) for r in rows], dtype=bool),
        "reviewer": reviewer,
        "mask": mask,
        "targets": targets,
        "audited_rows": audited_rows,
    }


def _model_card(data: RefitInput, model_id: str, report: dict, reviewed: int) -> bytes:
    est = (report.get("estimate") or {}).get("accuracy", report.get("estimated_accuracy"))
    return (
        f"# Model {model_id}\n\nLive refit revision {data.revision} of model {data.base['id']} (dataset"
        f" {data.dataset_id}): the head of that model trained again on its cached features with {reviewed} certain"
        f" items (reviewers' tags, manifest labels, audited items) and the candidate sets of the rest"
        f" (docs/architecture.md, Live refit).\n\n- method of the job: {data.base['method']}\n- backbone:"
        f" {data.base['backbone']}\n- estimated accuracy: {est}\n"
    ).encode()


def save(data: RefitInput, *, rows, labels, confidence, margin, probs, head_sha, report, refit_seconds, started):
    """The fenced save (module doc); returns ``succeeded`` or ``stale``."""
    settings = get_settings()
    storage = get_storage()
    model_id = new_id()
    reviewed = int((data.targets >= 0).sum())
    artifacts = {**data.base["artifacts"], "head.npz": head_sha}
    artifacts["model_card.md"] = storage.put(_model_card(data, model_id, report, reviewed))
    updates = _item_rows(data, rows, labels, confidence, margin, probs, settings.review_confidence)
    with session_scope() as session:
        lock_dataset(session, data.dataset_id)
        refit = session.get(Refit, data.refit_id)
        latest = latest_model(session, data.dataset_id)
        if latest is None or latest.id != data.base["id"]:
            refit.status, refit.finished_at = "stale", utcnow()
            refit.error = f"model {latest.id if latest else None} replaced {data.base['id']} while this refit ran"
            return "stale"
        dataset = session.get(Dataset, data.dataset_id)
        if dataset.decision_seq != data.decision_seq:
            since = set(
                session.scalars(
                    select(ItemReview.item_id)
                    .join(Item, Item.id == ItemReview.item_id)
                    .where(Item.dataset_id == data.dataset_id, ItemReview.id > data.max_review_id)
                )
            )
            updates = [u for u in updates if u["_id"] not in since]
        metrics = {
            **{k: v for k, v in data.base["metrics"].items() if k not in ("quality", "refit")},
            "quality": report,
            "refit": {"of": data.base["id"], "revision": data.revision, "refit_id": data.refit_id},
        }
        session.add(
            Model(
                id=model_id,
                owner_id=data.owner_id,
                dataset_id=data.dataset_id,
                job_id=None,
                backbone=data.base["backbone"],
                method=data.base["method"],
                classes=data.classes,
                metrics=metrics,
                artifacts=artifacts,
            )
        )
        session.flush()
        write_items(session, updates, model_id=model_id, revision=data.revision)
        refresh_review_count(session, data.dataset_id)
        dataset.quality = report
        changed = sum(u["changed"] for u in updates)
        refit.status, refit.model_id, refit.finished_at = "succeeded", model_id, utcnow()
        refit.decision_seq, refit.reviewed_items = data.decision_seq, reviewed
        refit.audited_items, refit.changed_items = len(data.audited_rows), changed
        refit.quality, refit.seconds = report, round(time.perf_counter() - started, 3)
        event = {
            "dataset_id": data.dataset_id,
            "refit": {"id": data.refit_id, "revision": data.revision, "seconds": refit.seconds},
            "model_id": model_id,
            "updated_items": len(updates),
            "changed_items": changed,
            "estimate": report.get("estimate"),
        }
        emit(session, owner_id=data.owner_id, event="labels.updated", data=event)
    log.info(
        "refit %s (dataset %s, revision %d): %d items written, %d changed, %.2f s (head %.2f s)",
        data.refit_id,
        data.dataset_id,
        data.revision,
        len(updates),
        changed,
        time.perf_counter() - started,
        refit_seconds,
    )
    return "succeeded"


#: A refit rewrites an item whose tag or review flag changed, or whose confidence or margin moved by more than this;
#: the rest already hold the new model's scores to that precision (on 100,000 items most rows move less, and each
#: rewritten row costs PostgreSQL a new tuple and an entry in every items index).
SCORE_TOLERANCE = 0.002


def _item_rows(data: RefitInput, rows, labels, confidence, margin, probs, review_confidence: float) -> list[dict]:
    """The rows the refit writes (never a reviewer's; only those that changed: :data:`SCORE_TOLERANCE`)."""
    labels, confidence, margin = np.asarray(labels), np.asarray(confidence, np.float64), np.asarray(margin, np.float64)
    probs = probs.numpy() if hasattr(probs, "numpy") else np.asarray(probs)
    tags = np.array(data.classes, dtype=object)[labels]
    old = np.array(data.labels, dtype=object)[rows]
    flags = confidence < review_confidence
    scores = data.scores[rows]
    moved = ~(np.abs(scores - np.stack([confidence, margin], 1)) <= SCORE_TOLERANCE).all(1)  # NaN: moved
    changed = tags != old
    write = (changed | (flags != data.flags[rows]) | moved) & ~data.reviewer[rows]
    out = []
    for j in np.flatnonzero(write).tolist():
        r = int(rows[j])
        cand = np.flatnonzero(data.mask[r])
        out.append(
            {
                "_id": data.item_ids[r],
                "label": tags[j],
                "confidence": float(confidence[j]),
                "margin": float(margin[j]),
                "needs_review": bool(flags[j]),
                "probs": {data.classes[k]: round(float(probs[j, k]), 4) for k in cand},
                "changed": bool(changed[j]),
            }
        )
    return out


def write_items(session, updates: list[dict], *, model_id: str, revision: int) -> None:
    """The bulk UPDATE of the refit's items (never a reviewer's: checked in the statement)."""
    if not updates:
        return
    items = Item.__table__
    now = utcnow()
    not_reviewer = or_(items.c.label_source.is_(None), items.c.label_source != "reviewer")
    if session.get_bind().dialect.name != "postgresql":
        stmt = (
            update(items)
            .where(items.c.id == bindparam("_id"), not_reviewer)
            .values(
                label=bindparam("label"),
                confidence=bindparam("confidence"),
                margin=bindparam("margin"),
                needs_review=bindparam("needs_review"),
                probs=bindparam("probs", type_=JSON),
                refit_revision=case((bindparam("changed", type_=Boolean), revision), else_=items.c.refit_revision),
                label_source="model",
                model_id=model_id,
                updated_at=now,
            )
        )
        session.connection().execute(stmt, updates)
        return
    session.execute(
        text(_PG_UPDATE),
        {
            "ids": [u["_id"] for u in updates],
            "labels": [u["label"] for u in updates],
            "confidence": [u["confidence"] for u in updates],
            "margin": [u["margin"] for u in updates],
            "needs_review": [u["needs_review"] for u in updates],
            "probs": [json.dumps(u["probs"]) for u in updates],
            "changed": [u["changed"] for u in updates],
            "revision": revision,
            "model_id": model_id,
            "now": now,
        },
    )


#: One statement for every item (arrays unnested on the server): no per-row round trip, no 10,000-parameter SQL.
_PG_UPDATE = """
UPDATE items SET label = v.label, confidence = v.confidence, margin = v.margin, needs_review = v.needs_review,
  probs = CAST(v.probs AS JSON),
  refit_revision = CASE WHEN v.changed THEN :revision ELSE items.refit_revision END,
  label_source = 'model', model_id = :model_id, updated_at = :now
FROM unnest(CAST(:ids AS varchar[]), CAST(:labels AS varchar[]), CAST(:confidence AS float8[]),
            CAST(:margin AS float8[]), CAST(:needs_review AS boolean[]), CAST(:probs AS text[]),
            CAST(:changed AS boolean[])) AS v(id, label, confidence, margin, needs_review, probs, changed)
WHERE items.id = v.id AND (items.label_source IS NULL OR items.label_source <> 'reviewer')
"""
