"""The labels export: every item's disambiguated tag, confidence, margin and source, as JSON, JSONL or CSV.

JSON and JSONL carry every value verbatim. CSV is for spreadsheets: a text cell (file name, tag, candidates) that
starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` so that a spreadsheet shows
it instead of evaluating it as a formula (OWASP "CSV injection"); tags and file names come from uploaders.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import Item, Owner
from app.services.datasets import get_dataset

LabelFormat = Literal["json", "jsonl", "csv", "label-studio"]  # label-studio: app.services.label_studio
MEDIA_TYPES = {"json": "application/json", "jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
CSV_COLUMNS = ("id", "file", "sha256", "label", "confidence", "margin", "label_source", "needs_review", "candidates")


def _row(item: Item) -> dict:
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
    }


def export_labels(*, session: Session, owner: Owner, dataset_id: str, fmt: LabelFormat) -> tuple[str, str]:
    """(body, media type) of the labels in upload order. CSV joins candidates with ``|`` like the upload format."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    rows = [_row(i) for i in session.scalars(select(Item).where(Item.dataset_id == dataset.id).order_by(Item.seq))]
    if fmt == "json":
        body = json.dumps({"dataset_id": dataset.id, "classes": dataset.classes, "items": rows})
    elif fmt == "jsonl":
        body = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        body = "".join(_csv_lines(rows))
    return body, MEDIA_TYPES[fmt]


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
            ]
        )
    yield buf.getvalue()
