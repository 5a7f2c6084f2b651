"""The labels export: every item's disambiguated tag, confidence, margin and source, as JSON, JSONL or CSV.

Each row names the model that set its tag and that model's training job (``model_id``, ``job_id``; null for a
reviewer's tag or an untagged item). The export as a whole names them too: JSON's ``produced_by`` lists every
model whose tags it holds (with its job and how many tags), oldest first, and ``model_id`` / ``job_id`` name the
newest of them; every format carries that newest pair in the ``Tagsift-Model-Id`` / ``Tagsift-Job-Id`` headers.

JSON and JSONL carry every value verbatim. CSV is for spreadsheets: a text cell (file name, tag, candidates) that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` so that a spreadsheet shows
it instead of evaluating it as a formula (OWASP "CSV injection"); tags and file names come from uploaders.

Every format is streamed in constant memory (``app.services.streaming``): the rows are read a page at a time from
one snapshot of the database and sent as they are read; the bytes are those of the whole export built at once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from app.models import Item, Model, Owner
from app.services.datasets import get_dataset
from app.services.streaming import item_pages, stream_in_snapshot

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
    chunks: Iterator[str]  # the body, streamed: one database page of rows at a time (app.services.streaming)
    media_type: str
    model_id: str | None  # the newest model whose tags the export holds
    job_id: str | None  # its training job


# the model that tagged an item is the owner's (the worker writes it); its job comes from the models table
_ROWS = select(
    Item.seq,
    Item.id,
    Item.file,
    Item.sha256,
    Item.label,
    Item.confidence,
    Item.margin,
    Item.label_source,
    Item.needs_review,
    Item.candidates,
    Item.model_id,
    Model.job_id,
).outerjoin(Model, Model.id == Item.model_id)


def _row(row: Row) -> dict:
    return {
        "id": row.id,
        "file": row.file,
        "sha256": row.sha256,
        "label": row.label,
        "confidence": row.confidence,
        "margin": row.margin,
        "label_source": row.label_source,
        "needs_review": bool(row.needs_review),
        "candidates": row.candidates,
        "model_id": row.model_id,
        "job_id": row.job_id,
    }


def export_labels(*, session: Session, owner: Owner, dataset_id: str, fmt: LabelFormat) -> LabelsExport:
    """The labels in upload order, streamed (a 404 is answered before streaming starts). CSV joins candidates with
    ``|`` like the upload format."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    dataset_id, classes = dataset.id, list(dataset.classes)
    session.commit()  # the request's connection goes back to the pool: the rows stream from a snapshot of their own

    def body(snapshot: Session, produced_by: list[dict]) -> Iterator[str]:
        pages = (list(map(_row, rows)) for rows in item_pages(snapshot, _ROWS.where(Item.dataset_id == dataset_id)))
        if fmt == "json":
            return _json_chunks(dataset_id, classes, produced_by, pages)
        if fmt == "jsonl":
            return ("".join(json.dumps(r) + "\n" for r in rows) for rows in pages)
        return _csv_chunks(pages)

    produced_by, chunks = stream_in_snapshot(lambda snapshot: _produced_by(snapshot, dataset_id), body)
    newest = _newest(produced_by)
    return LabelsExport(chunks, MEDIA_TYPES[fmt], newest["model_id"], newest["job_id"])


def _newest(produced_by: list[dict]) -> dict:
    return produced_by[-1] if produced_by else {"model_id": None, "job_id": None}


def _json_chunks(
    dataset_id: str, classes: list[str], produced_by: list[dict], pages: Iterator[list[dict]]
) -> Iterator[str]:
    """``json.dumps`` of the whole export, in pieces: the head up to ``"items": [``, the rows with ``, `` between
    them (json's default separators), then ``]}``."""
    newest = _newest(produced_by)
    head = json.dumps(
        {
            "dataset_id": dataset_id,
            "classes": classes,
            "model_id": newest["model_id"],
            "job_id": newest["job_id"],
            "produced_by": produced_by,
            "items": [],
        }
    )
    yield head[: -len("]}")]
    sep = ""
    for rows in pages:
        yield sep + ", ".join(json.dumps(r) for r in rows)
        sep = ", "
    yield "]}"


def _produced_by(session: Session, dataset_id: str) -> list[dict]:
    """Every model whose tags the dataset holds, oldest first: model id, job id, and how many tags it set."""
    rows = session.execute(
        select(Model.id, Model.job_id, func.count())
        .join(Item, Item.model_id == Model.id)
        .where(Item.dataset_id == dataset_id, Item.label_source == "model")
        .group_by(Model.id, Model.job_id, Model.created_at)
        .order_by(Model.created_at, Model.id)
    ).all()
    return [{"model_id": m, "job_id": j, "labels": int(n)} for m, j, n in rows]


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """``text`` for a spreadsheet cell: prefixed with ``'`` when a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_chunks(pages: Iterator[list[dict]]) -> Iterator[str]:
    """The header line, then one chunk of lines per page (the csv writer keeps no state between rows)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(CSV_COLUMNS)
    yield buf.getvalue()
    for rows in pages:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
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
