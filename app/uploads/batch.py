"""What the upload parser takes and gives: the raw parts of an upload in, a validated batch of items out."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.errors import FieldErrors


@dataclass
class RawUpload:
    """The parts of an upload, read but not yet validated (``app.uploads.forms.read_multipart`` reads a form)."""

    name: str | None = None
    classes: str | None = None
    prompt_template: str | None = None
    manifest: bytes | None = None
    manifest_name: str | None = None
    manifest_format: str | None = None  # auto (absent), jsonl, csv or label-studio (app.uploads.label_studio)
    images: list[tuple[str, bytes]] = field(default_factory=list)
    archive: bytes | None = None
    archive_name: str | None = None
    errors: FieldErrors = field(default_factory=FieldErrors)


@dataclass
class ValidItem:
    file: str
    sha256: str
    data: bytes
    width: int
    height: int
    candidates: list[str]
    label: str | None


@dataclass
class BatchDuplicate:
    file: str
    sha256: str
    duplicate_of: str


@dataclass
class ValidBatch:
    items: list[ValidItem]
    duplicates: list[BatchDuplicate]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # Label Studio tasks left out (every annotation cancelled)
