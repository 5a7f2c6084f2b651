"""The upload parser: a :class:`RawUpload` into a :class:`ValidBatch`, or one 422 listing every problem.

:func:`parse_upload` runs five named steps, each adding what it finds to one :class:`FieldErrors`:

1. :func:`collect_files`: the uploaded images, or an archive's members (and its manifest, if the form sent none);
2. :func:`parse_rows`: the manifest (JSONL, CSV or a Label Studio export) into rows;
3. :func:`resolve_classes`: the dataset's classes (plus any given), or for a new dataset the given ones or the
   candidates' union, and every candidate among them;
4. :func:`match_files`: each uploaded file to the manifest row that names it, and back;
5. :func:`verify_images`: every image decoded in full.

Only then, with no problem recorded, are duplicates within the batch set aside (:func:`drop_duplicates`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from app.checks import shorten
from app.config import Settings
from app.errors import FieldErrors, InvalidInput
from app.imaging import ImageInvalid, verify_image
from app.storage import sha256_hex
from app.uploads.archives import read_archive
from app.uploads.batch import BatchDuplicate, RawUpload, ValidBatch, ValidItem
from app.uploads.label_studio import MANIFEST_FORMATS, is_label_studio, parse_label_studio
from app.uploads.manifests import ManifestRow, look_alike_files, parse_manifest
from app.uploads.rules import MAX_FILE_NAME, file_name_problem, look_alike_classes, parse_classes


def parse_upload(
    raw: RawUpload, *, settings: Settings, dataset_classes: list[str] | None, require_items: bool
) -> ValidBatch:
    """Check everything in ``raw``; :class:`InvalidInput` listing every problem, or the batch to store.

    ``dataset_classes`` is None for a new dataset (its classes are ``classes`` or, without it, the union of the
    candidates, sorted); for an existing dataset, ``classes`` in the upload may append new classes.
    """
    errors = FieldErrors(raw.errors)
    given = parse_classes(raw.classes, settings=settings, errors=errors, known=dataset_classes) if raw.classes else None
    files = collect_files(raw, settings=settings, errors=errors)
    rows = parse_rows(
        files,
        known=_known_classes(dataset_classes, given),
        settings=settings,
        errors=errors,
        require_items=require_items,
    )
    if len(rows.rows) > settings.max_items_per_request or len(rows.files) > settings.max_items_per_request:
        errors.add(
            field="manifest",
            message=f"manifest: {max(len(rows.rows), len(rows.files))} items, over the limit of "
            f"{settings.max_items_per_request} per request",
        )
        raise InvalidInput(summary(errors), errors=errors)
    look_alike_files(rows.rows, errors)
    classes = resolve_classes(
        rows.rows, known=_known_classes(dataset_classes, rows.classes or given), settings=settings, errors=errors
    )
    if given is None:  # classes read from the rows: none may look like another (given ones were checked above)
        look_alike_classes(classes, known=dataset_classes or [], errors=errors)
    matched = match_files(rows.files, rows.rows, errors=errors)
    items = verify_images(matched, settings=settings, errors=errors)
    if errors:
        raise InvalidInput(summary(errors), errors=errors)
    kept, duplicates = drop_duplicates(items)
    return ValidBatch(items=kept, duplicates=duplicates, classes=classes, skipped=rows.skipped)


@dataclass
class UploadFiles:
    """Step 1's result: the uploaded files (name, bytes) and the manifest, from the form or the archive."""

    files: list[tuple[str, bytes]]
    manifest: bytes | None
    manifest_name: str | None
    manifest_format: str | None


def collect_files(raw: RawUpload, *, settings: Settings, errors: FieldErrors) -> UploadFiles:
    """The ``images`` parts, or the ``archive``'s members; the form's manifest, or else the archive's."""
    out = UploadFiles(list(raw.images), raw.manifest, raw.manifest_name, raw.manifest_format)
    if raw.archive is not None:
        if raw.images:
            errors.add(field="archive", message="archive: send either `images` files or one `archive`")
        members, manifest = read_archive(raw.archive, settings=settings, errors=errors)
        out.files.extend(members)
        if out.manifest is None and manifest is not None:
            out.manifest, out.manifest_name = manifest
    return out


@dataclass
class UploadRows:
    """Step 2's result: the manifest's rows, the files still to match, and what a Label Studio export adds."""

    rows: list[ManifestRow]
    files: list[tuple[str, bytes]]
    classes: list[str] | None = None  # read from a Label Studio export when no classes were known
    skipped: list[str] = field(default_factory=list)  # Label Studio tasks left out (every annotation cancelled)


def parse_rows(
    upload: UploadFiles, *, known: list[str] | None, settings: Settings, errors: FieldErrors, require_items: bool
) -> UploadRows:
    """The manifest's rows (``known``: the classes so far, None when they come from the rows)."""
    out = UploadRows(rows=[], files=upload.files)
    fmt, manifest, name = upload.manifest_format, upload.manifest, upload.manifest_name
    if fmt is not None and fmt not in MANIFEST_FORMATS:
        errors.add(
            field="manifest_format",
            message=f"manifest_format: {shorten(fmt)!r} is not one of {', '.join(MANIFEST_FORMATS)}",
        )
    if manifest is not None and len(manifest) > settings.max_manifest_bytes:
        errors.add(
            field="manifest",
            item=name,
            message=f"manifest: {len(manifest)} bytes, over the limit of {settings.max_manifest_bytes}",
        )
    elif manifest is not None and is_label_studio(manifest, fmt):
        export = parse_label_studio(
            manifest, file_names=[n for n, _ in upload.files], classes=known, settings=settings, errors=errors
        )
        out.rows, out.skipped = export.rows, export.skipped
        if known is None and export.classes:
            out.classes = export.classes
        # a skipped task's image may be sent: it is left out, not "uploaded but not in the manifest"; nor is a file
        # that a task's error already names (several files matching one data.image)
        left_out = set(export.skipped_files) | set(export.reported_files)
        out.files = [(n, d) for n, d in upload.files if n not in left_out]
    elif manifest is not None:
        out.rows = parse_manifest(
            manifest, name, settings=settings, errors=errors, fmt=fmt if fmt in ("jsonl", "csv") else None
        )
    elif upload.files:
        errors.add(field="manifest", message="manifest: required when images are uploaded")
    elif require_items:
        errors.add(field="manifest", message="manifest: required (with `images` or an `archive`)")
    return out


def _known_classes(dataset_classes: list[str] | None, given: list[str] | None) -> list[str] | None:
    """The dataset's classes plus any given ones, or the given ones for a new dataset; None when neither."""
    if dataset_classes is not None:
        return list(dataset_classes) + [c for c in (given or []) if c not in dataset_classes]
    return given


def resolve_classes(
    rows: list[ManifestRow], *, known: list[str] | None, settings: Settings, errors: FieldErrors
) -> list[str]:
    """The batch's classes (``known``, or else the candidates' union) with every row's candidates among them."""
    # sorted: the same classes (and class indices) whatever the order of the manifest's lines
    classes = known if known is not None else sorted({c for row in rows for c in row.candidates})
    if len(classes) > settings.max_classes:
        errors.add(
            field="classes", message=f"classes: {len(classes)} classes, over the limit of {settings.max_classes}"
        )
    class_set = set(classes)
    for row in rows:
        for c in [c for c in row.candidates if c not in class_set]:
            errors.add(
                field="candidates",
                item=row.file,
                line=row.line,
                message=f"{row.file}: candidate {shorten(c)!r} is not one of the dataset's classes",
            )
    return classes


@dataclass
class MatchedFile:
    """Step 4's result for one uploaded file: its name, bytes and the row naming it (None: no row does)."""

    name: str
    data: bytes
    row: ManifestRow | None


def match_files(files: list[tuple[str, bytes]], rows: list[ManifestRow], *, errors: FieldErrors) -> list[MatchedFile]:
    """Each uploaded file with the row that names it: by its full name, or else by its base name when that is
    unique (a browser sends ``a.jpg`` for ``photos/a.jpg``); a row without a file and a file without a row are
    errors."""
    by_name: dict[str, bytes] = {}
    for name, data in files:
        problem = file_name_problem(name)
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

    matched: dict[str, ManifestRow] = {}
    shared: set[str] = set()  # files already named in a "share a file name" error
    for row in rows:
        name = row.file if row.file in by_name else None
        same_base = by_base.get(posixpath.basename(row.file), [])
        if name is None and len(same_base) == 1:
            name = same_base[0]
        elif name is None and len(same_base) > 1:
            shown = ", ".join(shorten(f, 100) for f in same_base[:5]) + (", ..." if len(same_base) > 5 else "")
            errors.add(
                field="manifest",
                item=row.file,
                line=row.line,
                message=f"{row.file} (manifest line {row.line}): {len(same_base)} uploaded files share this file "
                f"name ({shown}): name one of them in full in the manifest, one row per file",
            )
            shared.update(same_base)
            continue
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
        if name not in matched and name not in shared:
            errors.add(field="images", item=name, message=f"{name}: uploaded but not in the manifest")
    return [MatchedFile(name, data, matched.get(name)) for name, data in by_name.items()]


def verify_images(files: list[MatchedFile], *, settings: Settings, errors: FieldErrors) -> list[ValidItem]:
    """Every uploaded file decoded in full (:func:`app.imaging.verify_image`); the items of the matched ones."""
    items: list[ValidItem] = []
    for f in files:
        try:
            info = verify_image(f.data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
        except ImageInvalid as exc:
            errors.add(field="images", item=f.name, message=f"{f.name}: {exc}")
            continue
        if f.row is not None:
            items.append(
                ValidItem(
                    file=f.row.file,
                    sha256=sha256_hex(f.data),
                    data=f.data,
                    width=info.width,
                    height=info.height,
                    candidates=f.row.candidates,
                    label=f.row.label,
                )
            )
    return items


def drop_duplicates(items: list[ValidItem]) -> tuple[list[ValidItem], list[BatchDuplicate]]:
    """Duplicates within the batch (same sha256): the first is kept, the others reported."""
    kept: list[ValidItem] = []
    first: dict[str, str] = {}
    duplicates: list[BatchDuplicate] = []
    for item in items:
        if item.sha256 in first:
            duplicates.append(BatchDuplicate(file=item.file, sha256=item.sha256, duplicate_of=first[item.sha256]))
        else:
            first[item.sha256] = item.file
            kept.append(item)
    return kept, duplicates


def summary(errors: FieldErrors) -> str:
    """The 422's ``detail``: the count, and the first five messages."""
    head = "; ".join(e.message for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"{len(errors)} problem(s), nothing was stored: {head}{more}"
