"""Upload parsing and validation: a multipart body -> a validated batch of items, or one 422 listing every problem.

An upload is a *manifest* (JSONL lines ``{"file", "candidates", "label"?}`` or CSV ``file,candidates[,label]``
with candidates separated by ``|``) plus the images, as repeated ``images`` parts or one ``archive`` zip (which
may carry the manifest itself as a top-level ``manifest.jsonl`` / ``manifest.csv``).

Checks (all of them run; every problem is reported at once, and nothing is stored unless there is none):

* form: text fields and file names are UTF-8 (starlette would quietly read other bytes as Latin-1), a text
  field is at most its part limit (named in the 422), no unknown fields;
* manifest: at most ``settings.max_manifest_bytes``, UTF-8 (a BOM is fine), one object per JSONL line with only
  the keys ``file``, ``candidates``, ``label`` (no ``image_url``: images are uploaded, never fetched) / a CSV
  header of those columns, a non-empty ``file`` named once, at most 500 characters, no control characters and
  not a URL, a non-empty candidate set, tags non-empty, at most ``settings.max_tag_length`` characters and
  without control characters, every candidate in the dataset's ``classes``, ``label`` (if any) among the row's
  candidates, at most ``settings.max_items_per_request`` rows;
* images: decoded fully by Pillow (0-byte, non-image, truncated/corrupt, over ``max_image_pixels`` or
  ``max_image_bytes`` are rejected, see :func:`app.imaging.verify_image`), each uploaded file named by a
  manifest row and each row matched by an uploaded file;
* zip: no absolute or ``..`` member names, no encrypted members, at most ``max_archive_members`` members,
  no member compressed more than ``max_archive_ratio`` times or over ``max_image_bytes``, at most
  ``max_archive_bytes`` uncompressed in total (bounded reads, the headers are not trusted);
* duplicates (same sha256) within the batch are not errors: the first is kept, the others reported.

File names are display names only; nothing is ever written under a name from the request (blobs are
content-addressed), so a hostile name cannot escape the data directory. Messages quote user values shortened
(:func:`app.services.checks.shorten`): a 10 MB tag is refused in a small answer.

A manifest row's ``file`` matches the uploaded file (or zip member path) of the same name, or else the only
uploaded file with that base name (a browser sends ``a.jpg`` for ``photos/a.jpg``).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import zipfile
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartParser

from app.api.errors import ApiError, FieldError, InvalidInput
from app.config import Settings
from app.imaging import ImageInvalid, verify_image
from app.services.checks import control_char_problem, shorten
from app.storage import sha256_hex

#: Longest file name (the ``items.file`` column): a display name, never used as a path.
MAX_FILE_NAME = 500
#: Keys of a JSONL manifest line (CSV: the header's columns).
ROW_KEYS = ("file", "candidates", "label")
#: A ``file`` like "http://host/x.jpg": tagsift never fetches images, they are uploaded.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
FORM_FIELDS = ("name", "classes", "prompt_template", "manifest", "images", "archive")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class RawUpload:
    """The parts of a multipart upload, read but not yet validated."""

    name: str | None = None
    classes: str | None = None
    prompt_template: str | None = None
    manifest: bytes | None = None
    manifest_name: str | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)
    archive: bytes | None = None
    archive_name: str | None = None
    errors: list[FieldError] = field(default_factory=list)


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


@dataclass
class _Row:
    line: int
    file: str
    candidates: list[str]
    label: str | None


# --- reading the request ----------------------------------------------------------------------------------


class _NotText(str):
    """A form value or file name whose bytes are not valid text in the form's charset (UTF-8 unless declared).

    Starlette would quietly decode such bytes as Latin-1; the strict parser below marks them with this type so
    that the upload is refused naming the field, instead of storing mojibake.
    """


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's multipart parser, except that undecodable field values and file names become :class:`_NotText`
    and a form field over the part limit is a 422 naming the field."""

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        upload = self._current_part.file
        if upload is not None and upload.filename is not None:
            _, options = parse_options_header(self._current_part.content_disposition)
            if not _decodes(options.get(b"filename", b""), self._charset):
                upload.filename = _NotText(upload.filename)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + end - start > self.max_part_size:
            field = shorten(part.field_name, 40)
            raise InvalidInput(
                f"{field}: the form field is over the limit of {self.max_part_size} bytes",
                errors=[FieldError(field=field, message=f"{field}: over the limit of {self.max_part_size} bytes")],
            )
        super().on_part_data(data, start, end)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None and not _decodes(bytes(part.data), self._charset):
            self.items.append((part.field_name, _NotText(bytes(part.data).decode("latin-1"))))
            return
        super().on_part_end()


def _not_text(value: UploadFile | str) -> bool:
    """Whether a form value, or an uploaded file's name, failed to decode (see :class:`_StrictMultiPartParser`)."""
    return isinstance(value.filename if isinstance(value, UploadFile) else value, _NotText)


def _decodes(data: bytes, charset: str) -> bool:
    try:
        data.decode(charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return False
    return True


async def _parse_form(request: Request, *, max_files: int, max_fields: int, max_part_size: int) -> FormData:
    """The multipart form of ``request`` (strict about text, see :class:`_StrictMultiPartParser`)."""
    parser = _StrictMultiPartParser(
        request.headers, request.stream(), max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
    )
    try:
        return await parser.parse()
    except ApiError:
        raise
    except Exception as exc:  # starlette's MultiPartException, python-multipart's errors (the cause says more)
        detail = "; ".join(
            str(e) for e in (exc, exc.__cause__) if e is not None and str(e) and str(e) != "Invalid multipart data."
        )
        raise ApiError(f"body: cannot parse the multipart form ({detail})", code="malformed_multipart") from None


async def read_multipart(request: Request, settings: Settings) -> RawUpload:
    """Read a ``multipart/form-data`` body into a :class:`RawUpload` (unknown fields become errors)."""
    form = await _parse_form(
        request,
        max_files=settings.max_items_per_request + 2,
        max_fields=len(FORM_FIELDS) + 10,
        max_part_size=settings.max_manifest_bytes,
    )
    raw = RawUpload()
    try:
        for key, value in form.multi_items():
            if key not in FORM_FIELDS:
                raw.errors.append(
                    FieldError(
                        field=shorten(key),
                        message=f"{shorten(key)}: unknown form field (expected one of {', '.join(FORM_FIELDS)})",
                    )
                )
                continue
            if _not_text(value):
                what = "its file name" if isinstance(value, UploadFile) else "the value"
                raw.errors.append(
                    FieldError(
                        field=key,
                        item=_part_name(value),
                        message=f"{key}: {what} is not valid UTF-8 text",
                    )
                )
                continue
            if key == "images":
                if not isinstance(value, UploadFile):
                    raw.errors.append(FieldError(field="images", message="images: each part must be a file"))
                    continue
                raw.images.append((_clean_name(value.filename or ""), await value.read()))
            elif key == "archive":
                if raw.archive is not None:
                    raw.errors.append(FieldError(field="archive", message="archive: send at most one zip"))
                    continue
                raw.archive, raw.archive_name = await _part_bytes(value), _part_name(value)
            elif key == "manifest":
                if raw.manifest is not None:
                    raw.errors.append(FieldError(field="manifest", message="manifest: send exactly one manifest"))
                    continue
                raw.manifest, raw.manifest_name = await _part_bytes(value), _part_name(value)
            else:
                setattr(raw, key, (await _part_bytes(value)).decode("utf-8"))
    finally:
        await form.close()
    return raw


async def _part_bytes(value: UploadFile | str) -> bytes:
    if isinstance(value, UploadFile):
        return await value.read()
    return value.encode("utf-8")


def _part_name(value: UploadFile | str) -> str | None:
    return shorten(str(value.filename)) if isinstance(value, UploadFile) and value.filename is not None else None


def _clean_name(name: str) -> str:
    """A display name: '/' separators, no leading './' or '/'. Never used as a path."""
    name = name.replace("\\", "/").strip()
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


# --- validation -------------------------------------------------------------------------------------------


def parse_classes(text: str, *, settings: Settings, errors: list[FieldError]) -> list[str] | None:
    """The ``classes`` form field: a JSON list of distinct, non-empty tags."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        errors.append(FieldError(field="classes", message=f"classes: not valid JSON ({exc.msg} at char {exc.pos})"))
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(FieldError(field="classes", message="classes: must be a JSON list of strings"))
        return None
    return check_classes(value, settings=settings, errors=errors)


def check_classes(value: list[str], *, settings: Settings, errors: list[FieldError]) -> list[str]:
    """Stripped classes; empty, too long or repeated tags are recorded in ``errors``."""
    out: list[str] = []
    for i, raw in enumerate(value):
        tag = raw.strip()
        problem = _tag_problem(tag, settings)
        if problem:
            errors.append(FieldError(field="classes", item=str(i), message=f"classes[{i}]: {problem}"))
        elif tag in out:
            errors.append(FieldError(field="classes", item=tag, message=f"classes[{i}]: {tag!r} is listed twice"))
        else:
            out.append(tag)
    return out


def _tag_problem(tag: str, settings: Settings) -> str | None:
    if not tag:
        return "empty tag"
    if len(tag) > settings.max_tag_length:
        return f"tag {tag[:40]!r}... is {len(tag)} characters, over the limit of {settings.max_tag_length}"
    problem = control_char_problem(tag)
    if problem:
        return f"tag {shorten(tag)!r} {problem}"
    return None


def _file_name_problem(name: str) -> str | None:
    """Why a file name (a display name, never a path) cannot be stored, or None."""
    if len(name) > MAX_FILE_NAME:
        return f"the file name is {len(name)} characters, over the limit of {MAX_FILE_NAME}"
    problem = control_char_problem(name)
    return f"the file name {problem}" if problem else None


def validate_upload(
    raw: RawUpload, *, settings: Settings, dataset_classes: list[str] | None, require_items: bool
) -> ValidBatch:
    """Check everything in ``raw``; :class:`InvalidInput` listing every problem, or the batch to store.

    ``dataset_classes`` is None for a new dataset (its classes are ``classes`` or the union of the candidates,
    in order of first appearance); for an existing dataset, ``classes`` in the upload may append new classes.
    """
    errors = list(raw.errors)
    given_classes = parse_classes(raw.classes, settings=settings, errors=errors) if raw.classes else None

    files: list[tuple[str, bytes]] = list(raw.images)
    if raw.archive is not None:
        if raw.images:
            errors.append(FieldError(field="archive", message="archive: send either `images` files or one `archive`"))
        manifest_from_zip = _read_archive(raw.archive, settings=settings, errors=errors)
        files.extend(manifest_from_zip[0])
        if raw.manifest is None and manifest_from_zip[1] is not None:
            raw.manifest, raw.manifest_name = manifest_from_zip[1]

    rows: list[_Row] = []
    if raw.manifest is not None and len(raw.manifest) > settings.max_manifest_bytes:
        errors.append(
            FieldError(
                field="manifest",
                item=raw.manifest_name,
                message=f"manifest: {len(raw.manifest)} bytes, over the limit of {settings.max_manifest_bytes}",
            )
        )
    elif raw.manifest is not None:
        rows = _parse_manifest(raw.manifest, raw.manifest_name, settings=settings, errors=errors)
    elif files:
        errors.append(FieldError(field="manifest", message="manifest: required when images are uploaded"))
    elif require_items:
        errors.append(FieldError(field="manifest", message="manifest: required (with `images` or an `archive`)"))

    if len(rows) > settings.max_items_per_request or len(files) > settings.max_items_per_request:
        errors.append(
            FieldError(
                field="manifest",
                message=f"manifest: {max(len(rows), len(files))} items, over the limit of "
                f"{settings.max_items_per_request} per request",
            )
        )
        raise InvalidInput(_summary(errors), errors=errors)

    # Classes: the dataset's, plus any given; or, for a new dataset, the given ones or the candidates' union.
    if dataset_classes is not None:
        classes = list(dataset_classes) + [c for c in (given_classes or []) if c not in dataset_classes]
    elif given_classes is not None:
        classes = given_classes
    else:
        classes = []
        seen: set[str] = set()
        for row in rows:
            for c in row.candidates:
                if c not in seen:
                    seen.add(c)
                    classes.append(c)
    if len(classes) > settings.max_classes:
        errors.append(
            FieldError(
                field="classes", message=f"classes: {len(classes)} classes, over the limit of {settings.max_classes}"
            )
        )
    class_set = set(classes)
    for row in rows:
        unknown = [c for c in row.candidates if c not in class_set]
        for c in unknown:
            errors.append(
                FieldError(
                    field="candidates",
                    item=row.file,
                    line=row.line,
                    message=f"{row.file}: candidate {shorten(c)!r} is not one of the dataset's classes",
                )
            )

    # Files <-> rows.
    by_name: dict[str, bytes] = {}
    for name, data in files:
        problem = _file_name_problem(name)
        if problem:
            name = shorten(name, MAX_FILE_NAME)  # the batch fails: the short form only keeps the answer small
            errors.append(FieldError(field="images", item=name, message=f"{name}: {problem}"))
        if not name:
            errors.append(FieldError(field="images", message="images: a file part has no file name"))
        elif name in by_name:
            errors.append(FieldError(field="images", item=name, message=f"{name}: uploaded twice under the same name"))
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
            errors.append(
                FieldError(
                    field="manifest",
                    item=row.file,
                    line=row.line,
                    message=f"{row.file}: named in the manifest (line {row.line}) but not uploaded",
                )
            )
            continue
        matched[name] = row
    for name in by_name:
        if name not in matched:
            errors.append(FieldError(field="images", item=name, message=f"{name}: uploaded but not in the manifest"))

    # Images.
    items: list[ValidItem] = []
    for name, data in by_name.items():
        try:
            info = verify_image(data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
        except ImageInvalid as exc:
            errors.append(FieldError(field="images", item=name, message=f"{name}: {exc}"))
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
    return ValidBatch(items=kept, duplicates=duplicates, classes=classes)


def _summary(errors: list[FieldError]) -> str:
    head = "; ".join(e.message for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"{len(errors)} problem(s), nothing was stored: {head}{more}"


def _parse_manifest(data: bytes, name: str | None, *, settings: Settings, errors: list[FieldError]) -> list[_Row]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        errors.append(FieldError(field="manifest", message=f"manifest: not UTF-8 (invalid byte at offset {exc.start})"))
        return []
    lower = (name or "").lower()
    if lower.endswith(".csv"):
        is_jsonl = False
    elif lower.endswith((".jsonl", ".ndjson", ".json")):
        is_jsonl = True
    else:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        is_jsonl = first.startswith("{")
    rows = _parse_jsonl(text, errors) if is_jsonl else _parse_csv(text, errors)
    out: list[_Row] = []
    seen: dict[str, int] = {}
    out_files: set[str] = set()
    for row in rows:
        if _URL.match(row.file):
            errors.append(
                FieldError(
                    field="file",
                    item=shorten(row.file, MAX_FILE_NAME),
                    line=row.line,
                    message=f"{shorten(row.file, MAX_FILE_NAME)}: named in the manifest (line {row.line}) but not "
                    "uploaded: a URL is not an uploaded file (tagsift never fetches images; upload the file)",
                )
            )
            continue
        # A row with problems is still kept (unless it repeats a file) so its image is not also reported as
        # "not in the manifest"; the batch fails on the recorded errors anyway.
        ok = True
        problem = _file_name_problem(row.file)
        if problem:
            row.file = shorten(row.file, MAX_FILE_NAME)  # the batch fails: the short form keeps the answer small
            errors.append(
                FieldError(
                    field="file", item=row.file, line=row.line, message=f"{row.file}: {problem} (line {row.line})"
                )
            )
            ok = False
        if row.file in seen:
            errors.append(
                FieldError(
                    field="manifest",
                    item=row.file,
                    line=row.line,
                    message=f"{row.file}: listed twice in the manifest (lines {seen[row.file]} and {row.line})",
                )
            )
            ok = False
        else:
            seen[row.file] = row.line
        if not row.candidates:
            errors.append(
                FieldError(
                    field="candidates",
                    item=row.file,
                    line=row.line,
                    message=f"{row.file}: the candidate set is empty (line {row.line})",
                )
            )
            ok = False
        for tag in [*row.candidates, *([row.label] if row.label is not None else [])]:
            problem = _tag_problem(tag, settings)
            if problem:
                errors.append(
                    FieldError(field="candidates", item=row.file, line=row.line, message=f"{row.file}: {problem}")
                )
                ok = False
        if row.label is not None and row.candidates and row.label not in row.candidates:
            errors.append(
                FieldError(
                    field="label",
                    item=row.file,
                    line=row.line,
                    message=f"{row.file}: label {shorten(row.label)!r} is not among its candidates",
                )
            )
            ok = False
        if ok or row.file not in out_files:
            out.append(row)
            out_files.add(row.file)
    return out


def _tags(values: list[str]) -> list[str]:
    """Stripped, de-duplicated (order kept); empty strings are kept so they are reported."""
    out: list[str] = []
    for v in values:
        t = v.strip()
        if t not in out:
            out.append(t)
    return out


def _parse_jsonl(text: str, errors: list[FieldError]) -> list[_Row]:
    rows: list[_Row] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(
                FieldError(field="manifest", line=n, message=f"manifest line {n}: not valid JSON ({exc.msg})")
            )
            continue
        if not isinstance(obj, dict):
            errors.append(FieldError(field="manifest", line=n, message=f"manifest line {n}: not a JSON object"))
            continue
        if _has_lone_surrogate(obj):  # a "\ud800" escape: not text, and it could not even be sent back as UTF-8
            errors.append(
                FieldError(
                    field="manifest", line=n, message=f"manifest line {n}: invalid Unicode (an unpaired \\u surrogate)"
                )
            )
            continue
        unknown = [shorten(str(k), 40) for k in obj if k not in ROW_KEYS]
        if unknown:
            errors.append(
                FieldError(
                    field="manifest",
                    item=shorten(obj["file"], MAX_FILE_NAME) if isinstance(obj.get("file"), str) else None,
                    line=n,
                    message=f"manifest line {n}: unknown key(s) {', '.join(map(repr, unknown))}: a line has "
                    "`file` (an uploaded file), `candidates` and optionally `label`; images are never fetched from "
                    "a URL",
                )
            )
        file = obj.get("file")
        if not isinstance(file, str) or not _clean_name(file):
            errors.append(
                FieldError(field="file", line=n, message=f"manifest line {n}: `file` must be a non-empty string")
            )
            continue
        file = _clean_name(file)
        shown = shorten(file, MAX_FILE_NAME)
        cands = obj.get("candidates")
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            errors.append(
                FieldError(
                    field="candidates",
                    item=shown,
                    line=n,
                    message=f"{shown}: `candidates` must be a list of strings (line {n})",
                )
            )
            continue
        label = obj.get("label")
        if label is not None and not isinstance(label, str):
            errors.append(FieldError(field="label", item=shown, line=n, message=f"{shown}: `label` must be a string"))
            continue
        rows.append(_Row(line=n, file=file, candidates=_tags(cands), label=label.strip() if label else None))
    return rows


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # fails only on unpaired surrogates
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _parse_csv(text: str, errors: list[FieldError]) -> list[_Row]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        errors.append(FieldError(field="manifest", line=1, message=f"manifest line 1: bad CSV ({exc})"))
        return []
    cols = [h.strip().lower() for h in header]
    if "file" not in cols or "candidates" not in cols:
        errors.append(
            FieldError(
                field="manifest",
                line=1,
                message="manifest: a CSV manifest needs a header with `file` and `candidates` (and optionally `label`)",
            )
        )
        return []
    unknown = [shorten(c, 40) for c in cols if c not in ROW_KEYS]
    if unknown:
        errors.append(
            FieldError(
                field="manifest",
                line=1,
                message=f"manifest line 1: unknown column(s) {', '.join(map(repr, unknown))}: the columns are "
                "`file` (an uploaded file), `candidates` and optionally `label`; images are never fetched from a URL",
            )
        )
    i_file, i_cand = cols.index("file"), cols.index("candidates")
    i_label = cols.index("label") if "label" in cols else None
    rows: list[_Row] = []
    try:
        for values in reader:
            n = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(cols):
                errors.append(
                    FieldError(
                        field="manifest",
                        line=n,
                        message=f"manifest line {n}: {len(values)} columns, the header has {len(cols)}",
                    )
                )
                continue
            file = _clean_name(values[i_file])
            if not file:
                errors.append(FieldError(field="file", line=n, message=f"manifest line {n}: empty `file`"))
                continue
            cands = _tags(values[i_cand].split("|")) if values[i_cand].strip() else []
            label = values[i_label].strip() if i_label is not None and values[i_label].strip() else None
            rows.append(_Row(line=n, file=file, candidates=cands, label=label))
    except csv.Error as exc:
        errors.append(FieldError(field="manifest", line=reader.line_num, message=f"manifest: bad CSV ({exc})"))
    return rows


def _read_archive(
    data: bytes, *, settings: Settings, errors: list[FieldError]
) -> tuple[list[tuple[str, bytes]], tuple[bytes, str] | None]:
    """The images of a zip (and its top-level manifest, if any), checked for zip bombs and path tricks."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        errors.append(FieldError(field="archive", message=f"archive: not a readable zip file ({exc})"))
        return [], None
    if len(infos) > settings.max_archive_members:
        errors.append(
            FieldError(
                field="archive",
                message=f"archive: {len(infos)} members, over the limit of {settings.max_archive_members}",
            )
        )
        return [], None
    files: list[tuple[str, bytes]] = []
    manifest: tuple[bytes, str] | None = None
    total = 0
    with zf:
        for info in infos:
            raw_name = info.filename
            name = raw_name.replace("\\", "/")
            if info.is_dir() or name.endswith("/"):
                continue
            parts = name.split("/")
            if name.startswith("/") or _DRIVE.match(name) or ".." in parts:
                shown = shorten(raw_name, MAX_FILE_NAME)
                errors.append(FieldError(field="archive", item=shown, message=f"{shown}: unsafe path in the archive"))
                continue
            name = _clean_name(name)
            if parts[0] == "__MACOSX" or posixpath.basename(name) in (".DS_Store", "Thumbs.db"):
                continue
            if info.flag_bits & 0x1:
                errors.append(
                    FieldError(field="archive", item=name, message=f"{name}: encrypted zip members are refused")
                )
                continue
            is_manifest = name.lower() in MANIFEST_NAMES
            limit = settings.max_manifest_bytes if is_manifest else settings.max_image_bytes
            if info.file_size > limit:
                errors.append(
                    FieldError(
                        field="archive", item=name, message=f"{name}: {info.file_size} bytes, over the limit of {limit}"
                    )
                )
                continue
            if info.file_size and info.file_size > settings.max_archive_ratio * max(info.compress_size, 1):
                errors.append(
                    FieldError(
                        field="archive",
                        item=name,
                        message=f"{name}: compressed {info.file_size / max(info.compress_size, 1):.0f} times, over "
                        f"the limit of {settings.max_archive_ratio} (zip bomb?)",
                    )
                )
                continue
            total += info.file_size
            if total > settings.max_archive_bytes:
                errors.append(
                    FieldError(
                        field="archive",
                        message=f"archive: over {settings.max_archive_bytes} bytes uncompressed in total",
                    )
                )
                return files, manifest
            try:
                with zf.open(info) as member:
                    content = member.read(limit + 1)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
                errors.append(FieldError(field="archive", item=name, message=f"{name}: cannot be read ({exc})"))
                continue
            if len(content) > limit:
                errors.append(
                    FieldError(field="archive", item=name, message=f"{name}: over the limit of {limit} bytes")
                )
                continue
            if is_manifest:
                manifest = (content, name)
            else:
                files.append((name, content))
    return files, manifest


@dataclass
class RawPredict:
    """The parts of a ``POST /predict`` form."""

    model_id: str | None = None
    images: list[tuple[str, bytes]] = field(default_factory=list)
    candidates: str | None = None
    top_k: str | None = None


async def read_predict_form(request: Request, settings: Settings) -> RawPredict:
    """Read ``model_id``, one or more ``image`` files, ``candidates`` (JSON) and ``top_k``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise ApiError(
            f"Content-Type: expected multipart/form-data, got {ctype or 'none'}",
            status=415,
            code="unsupported_media_type",
        )
    form = await _parse_form(
        request, max_files=settings.max_predict_images + 1, max_fields=20, max_part_size=1024 * 1024
    )
    raw = RawPredict()
    errors: list[FieldError] = []
    try:
        for key, value in form.multi_items():
            if key not in ("image", "model_id", "candidates", "top_k"):
                errors.append(FieldError(field=shorten(key), message=f"{shorten(key)}: unknown form field"))
            elif isinstance(value, _NotText) or (
                isinstance(value, UploadFile) and isinstance(value.filename, _NotText)
            ):
                what = "its file name" if isinstance(value, UploadFile) else "the value"
                errors.append(
                    FieldError(field=key, item=_part_name(value), message=f"{key}: {what} is not valid UTF-8 text")
                )
            elif key == "image":
                if isinstance(value, UploadFile):
                    raw.images.append((_clean_name(value.filename or ""), await value.read()))
                else:
                    errors.append(FieldError(field="image", message="image: each part must be a file"))
            else:
                setattr(raw, key, (await _part_bytes(value)).decode("utf-8"))
    finally:
        await form.close()
    if not raw.model_id:
        errors.append(FieldError(field="model_id", message="model_id: required"))
    if not raw.images and not any(e.field == "image" for e in errors):
        errors.append(FieldError(field="image", message="image: send one or more image files"))
    if errors:
        raise InvalidInput("; ".join(e.message for e in errors), errors=errors)
    return raw
