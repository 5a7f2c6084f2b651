"""The labels export: every item's disambiguated tag, confidence, margin and source, as JSON, JSONL or CSV.

Each row names the model that set its tag and that model's training job (``model_id``, ``job_id``; null for a
reviewer's tag or an untagged item). The export as a whole names them too: JSON's ``produced_by`` lists every
model whose tags it holds (with its job and how many tags), oldest first, and ``model_id`` / ``job_id`` name the
newest of them; every format carries that newest pair in the ``Tagsift-Model-Id`` / ``Tagsift-Job-Id`` headers.

JSON and JSONL carry every value verbatim. CSV is for spreadsheets: a text cell (file name, tag, candidates) that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` so that a spreadsheet shows
it instead of evaluating it as a formula (OWASP "CSV injection"); tags and file names come from uploaders.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Item, Model, Owner
from app.services.datasets import get_dataset

LabelFormat = Literal["json", "jsonl", "csv", "label-studio"]  # label-studio: app.services.label_studio
MEDIA_TYPES = {"json": "application/json", "jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_COLUMNS = (
    "id",
    "file",
    "sha256",
    "label",
    "confidence",
    "margin",
    "label_source",
    "needs_review",
    "candidates",
    "model_id",
    "job_id",
)


@dataclass
class LabelsExport:
    body: str
    media_type: str
    model_id: str | None  # the newest model whose tags the export holds
    job_id: str | None  # its training job


def _row(item: Item, job_id: str | None) -> dict:
    return {
        "id": item.id,
        "file": item.file,
        "sha256": item.sha256,
        "label": item.label,
        "confidence": item.confidence,
        "margin": item.margin,
        "label_source": item.label_source,
        "needs_review": bool(item.needs_review),
        "candidates": item.candidates,
        "model_id": item.model_id,
        "job_id": job_id,
    }


def export_labels(*, session: Session, owner: Owner, dataset_id: str, fmt: LabelFormat) -> LabelsExport:
    """The labels in upload order. CSV joins candidates with ``|`` like the upload format."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    # the model that tagged an item is the owner's (the worker writes it); its job comes from the models table
    stmt = (
        select(Item, Model.job_id)
        .outerjoin(Model, Model.id == Item.model_id)
        .where(Item.dataset_id == dataset.id)
        .order_by(Item.seq)
    )
    rows = [_row(item, job_id) for item, job_id in session.execute(stmt)]
    produced_by = _produced_by(session, rows)
    newest = produced_by[-1] if produced_by else {"model_id": None, "job_id": None}
    if fmt == "json":
        body = json.dumps(
            {
                "dataset_id": dataset.id,
                "classes": dataset.classes,
                "model_id": newest["model_id"],
                "job_id": newest["job_id"],
                "produced_by": produced_by,
                "items": rows,
            }
        )
    elif fmt == "jsonl":
        body = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        body = "".join(_csv_lines(rows))
    return LabelsExport(body, MEDIA_TYPES[fmt], newest["model_id"], newest["job_id"])


def _produced_by(session: Session, rows: list[dict]) -> list[dict]:
    """Every model whose tags are in ``rows``, oldest first: model id, job id, and how many tags it set."""
    counts = Counter(r["model_id"] for r in rows if r["model_id"] is not None and r["label_source"] == "model")
    if not counts:
        return []
    models = session.execute(
        select(Model.id, Model.job_id).where(Model.id.in_(list(counts))).order_by(Model.created_at, Model.id)
    ).all()
    return [{"model_id": m, "job_id": j, "labels": counts[m]} for m, j in models]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """``text`` for a spreadsheet cell: prefixed with ``'`` when a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_lines(rows: list[dict]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                r["id"],
                csv_safe(r["file"]),
                r["sha256"],
                csv_safe(r["label"] or ""),
                "" if r["confidence"] is None else repr(r["confidence"]),
                "" if r["margin"] is None else repr(r["margin"]),
                r["label_source"] or "",
                "true" if r["needs_review"] else "false",
                csv_safe("|".join(r["candidates"])),
                r["model_id"] or "",
                r["job_id"] or "",
            ]
        )
    yield buf.getvalue()
