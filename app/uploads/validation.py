"""An upload into a validated batch (:func:`validate_upload`), or one 422 listing every problem."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from app.api.errors import FieldErrors, InvalidInput
from app.config import Settings
from app.imaging import ImageInvalid, verify_image
from app.services.checks import shorten
from app.storage import sha256_hex
from app.uploads.archives import _read_archive
from app.uploads.forms import RawUpload
from app.uploads.label_studio import MANIFEST_FORMATS, is_label_studio, parse_label_studio
from app.uploads.manifests import _parse_manifest, _Row
from app.uploads.rules import MAX_FILE_NAME, _file_name_problem, parse_classes


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


def validate_upload(
    raw: RawUpload, *, settings: Settings, dataset_classes: list[str] | None, require_items: bool
) -> ValidBatch:
    """Check everything in ``raw``; :class:`InvalidInput` listing every problem, or the batch to store.

    ``dataset_classes`` is None for a new dataset (its classes are ``classes`` or, without it, the union of the
    candidates, sorted); for an existing dataset, ``classes`` in the upload may append new classes.
    """
    errors = FieldErrors(raw.errors)
    given_classes = parse_classes(raw.classes, settings=settings, errors=errors) if raw.classes else None

    files: list[tuple[str, bytes]] = list(raw.images)
    if raw.archive is not None:
        if raw.images:
            errors.add(field="archive", message="archive: send either `images` files or one `archive`")
        manifest_from_zip = _read_archive(raw.archive, settings=settings, errors=errors)
        files.extend(manifest_from_zip[0])
        if raw.manifest is None and manifest_from_zip[1] is not None:
            raw.manifest, raw.manifest_name = manifest_from_zip[1]

    rows: list[_Row] = []
    skipped: list[str] = []
    if raw.manifest_format is not None and raw.manifest_format not in MANIFEST_FORMATS:
        errors.add(
            field="manifest_format",
            message=f"manifest_format: {shorten(raw.manifest_format)!r} is not one of {', '.join(MANIFEST_FORMATS)}",
        )
    if raw.manifest is not None and len(raw.manifest) > settings.max_manifest_bytes:
        errors.add(
            field="manifest",
            item=raw.manifest_name,
            message=f"manifest: {len(raw.manifest)} bytes, over the limit of {settings.max_manifest_bytes}",
        )
    elif raw.manifest is not None and is_label_studio(raw.manifest, raw.manifest_format):
        known = None
        if dataset_classes is not None:
            known = list(dataset_classes) + [c for c in (given_classes or []) if c not in dataset_classes]
        elif given_classes is not None:
            known = given_classes
        export = parse_label_studio(
            raw.manifest, file_names=[n for n, _ in files], classes=known, settings=settings, errors=errors
        )
        rows, skipped = export.rows, export.skipped
        if known is None and export.classes:
            given_classes = export.classes
        # a skipped task's image may be sent: it is left out, not "uploaded but not in the manifest"; nor is a file
        # that a task's error already names (several files matching one data.image)
        left_out = set(export.skipped_files) | set(export.reported_files)
        files = [(n, d) for n, d in files if n not in left_out]
    elif raw.manifest is not None:
        fmt = raw.manifest_format if raw.manifest_format in ("jsonl", "csv") else None
        rows = _parse_manifest(raw.manifest, raw.manifest_name, settings=settings, errors=errors, fmt=fmt)
    elif files:
        errors.add(field="manifest", message="manifest: required when images are uploaded")
    elif require_items:
        errors.add(field="manifest", message="manifest: required (with `images` or an `archive`)")

    if len(rows) > settings.max_items_per_request or len(files) > settings.max_items_per_request:
        errors.add(
            field="manifest",
            message=f"manifest: {max(len(rows), len(files))} items, over the limit of "
            f"{settings.max_items_per_request} per request",
        )
        raise InvalidInput(_summary(errors), errors=errors)

    # Classes: the dataset's, plus any given; or, for a new dataset, the given ones or the candidates' union.
    if dataset_classes is not None:
        classes = list(dataset_classes) + [c for c in (given_classes or []) if c not in dataset_classes]
    elif given_classes is not None:
        classes = given_classes
    else:  # sorted: the same classes (and class indices) whatever the order of the manifest's lines
        classes = sorted({c for row in rows for c in row.candidates})
    if len(classes) > settings.max_classes:
        errors.add(
            field="classes", message=f"classes: {len(classes)} classes, over the limit of {settings.max_classes}"
        )
    class_set = set(classes)
    for row in rows:
        unknown = [c for c in row.candidates if c not in class_set]
        for c in unknown:
            errors.add(
                field="candidates",
                item=row.file,
                line=row.line,
                message=f"{row.file}: candidate {shorten(c)!r} is not one of the dataset's classes",
            )

    # Files <-> rows.
    by_name: dict[str, bytes] = {}
    for name, data in files:
        problem = _file_name_problem(name)
        if problem:
            name = shorten(name, MAX_FILE_NAME)  # the batch fails: the short form only keeps the answer small
            errors.add(field="images", item=name, message=f"{name}: {problem}")
        if not name:
            errors.add(field="images", message="images: a file part has no file name")
        elif name in by_name:
            errors.add(field="images", item=name, message=f"{name}: uploaded twice under the same name")
        else:
            by_name[name] = data
    by_base: dict[str, list[str]] = {}
    for name in by_name:
        by_base.setdefault(posixpath.basename(name), []).append(name)

    matched: dict[str, _Row] = {}
    for row in rows:
        name = row.file if row.file in by_name else None
        if name is None and len(by_base.get(posixpath.basename(row.file), [])) == 1:
            name = by_base[posixpath.basename(row.file)][0]
        if name is None or name in matched:
            errors.add(
                field="manifest",
                item=row.file,
                line=row.line,
                message=f"{row.file}: named in the manifest (line {row.line}) but not uploaded",
            )
            continue
        matched[name] = row
    for name in by_name:
        if name not in matched:
            errors.add(field="images", item=name, message=f"{name}: uploaded but not in the manifest")

    # Images.
    items: list[ValidItem] = []
    for name, data in by_name.items():
        try:
            info = verify_image(data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
        except ImageInvalid as exc:
            errors.add(field="images", item=name, message=f"{name}: {exc}")
            continue
        row = matched.get(name)
        if row is not None:
            items.append(
                ValidItem(
                    file=row.file,
                    sha256=sha256_hex(data),
                    data=data,
                    width=info.width,
                    height=info.height,
                    candidates=row.candidates,
                    label=row.label,
                )
            )

    if errors:
        raise InvalidInput(_summary(errors), errors=errors)

    # Duplicates within the batch: keep the first, report the others.
    kept: list[ValidItem] = []
    first: dict[str, str] = {}
    duplicates: list[BatchDuplicate] = []
    for item in items:
        if item.sha256 in first:
            duplicates.append(BatchDuplicate(file=item.file, sha256=item.sha256, duplicate_of=first[item.sha256]))
        else:
            first[item.sha256] = item.file
            kept.append(item)
    return ValidBatch(items=kept, duplicates=duplicates, classes=classes, skipped=skipped)


def _summary(errors: FieldErrors) -> str:
    head = "; ".join(e.message for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"{len(errors)} problem(s), nothing was stored: {head}{more}"
