"""Manifests: JSONL lines or CSV rows (``file``, ``candidates``, ``label``) into rows, every problem collected."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from app.checks import shorten
from app.config import Settings
from app.errors import FieldErrors
from app.names import look_alikes, nfc
from app.uploads.jsontext import JsonProblem, load
from app.uploads.rules import MAX_FILE_NAME, clean_name, file_name_problem, is_url, tag_problem

#: Keys of a JSONL manifest line (CSV: the header's columns).
ROW_KEYS = ("file", "candidates", "label")

#: JSONL lines end at ``\n`` or ``\r\n`` only: U+2028, U+2029, U+0085, form feeds are valid inside a JSON
#: string, and ``str.splitlines`` would split a line there (and shift every later line number).
_LINE_END = re.compile(r"\r?\n")


@dataclass
class ManifestRow:
    """One row of a manifest (or one Label Studio task): its line (or index + 1), file, candidates and label."""

    line: int
    file: str
    candidates: list[str]
    label: str | None


def parse_manifest(
    data: bytes, name: str | None, *, settings: Settings, errors: FieldErrors, fmt: str | None = None
) -> list[ManifestRow]:
    """The rows of a JSONL or CSV manifest (``fmt``, else by the file's name or first line), every row checked."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        errors.add(field="manifest", message=f"manifest: not UTF-8 (invalid byte at offset {exc.start})")
        return []
    lower = (name or "").lower()
    if fmt is not None:
        is_jsonl = fmt == "jsonl"
    elif lower.endswith(".csv"):
        is_jsonl = False
    elif lower.endswith((".jsonl", ".ndjson", ".json")):
        is_jsonl = True
    else:
        first = next((ln.strip() for ln in _LINE_END.split(text) if ln.strip()), "")
        is_jsonl = first.startswith("{")
    rows = _parse_jsonl(text, errors) if is_jsonl else _parse_csv(text, errors)
    out: list[ManifestRow] = []
    seen: dict[str, int] = {}
    out_files: set[str] = set()
    for row in rows:
        if is_url(row.file):
            errors.add(
                field="file",
                item=shorten(row.file, MAX_FILE_NAME),
                line=row.line,
                message=f"{shorten(row.file, MAX_FILE_NAME)}: named in the manifest (line {row.line}) but not "
                "uploaded: a URL is not an uploaded file (tagsift never fetches images; upload the file)",
            )
            continue
        # A row with problems is still kept (unless it repeats a file) so its image is not also reported as
        # "not in the manifest"; the batch fails on the recorded errors anyway.
        ok = True
        problem = file_name_problem(row.file)
        if problem:
            row.file = shorten(row.file, MAX_FILE_NAME)  # the batch fails: the short form keeps the answer small
            errors.add(field="file", item=row.file, line=row.line, message=f"{row.file}: {problem} (line {row.line})")
            ok = False
        if row.file in seen:
            errors.add(
                field="manifest",
                item=row.file,
                line=row.line,
                message=f"{row.file}: listed twice in the manifest (lines {seen[row.file]} and {row.line})",
            )
            ok = False
        else:
            seen[row.file] = row.line
        if not row.candidates:
            errors.add(
                field="candidates",
                item=row.file,
                line=row.line,
                message=f"{row.file}: the candidate set is empty (line {row.line})",
            )
            ok = False
        for tag in [*row.candidates, *([row.label] if row.label is not None else [])]:
            problem = tag_problem(tag, settings)
            if problem:
                errors.add(field="candidates", item=row.file, line=row.line, message=f"{row.file}: {problem}")
                ok = False
        if row.label is not None and row.candidates and row.label not in row.candidates:
            errors.add(
                field="label",
                item=row.file,
                line=row.line,
                message=f"{row.file}: label {shorten(row.label)!r} is not among its candidates",
            )
            ok = False
        if ok or row.file not in out_files:
            out.append(row)
            out_files.add(row.file)
    return out


def look_alike_files(rows: list[ManifestRow], errors: FieldErrors) -> None:
    """Two rows whose file names render alike (:func:`app.names.look_alikes`) are an error naming both."""
    line = {row.file: row.line for row in rows}
    for first, second in look_alikes(row.file for row in rows):
        errors.add(
            field="file",
            item=second,
            line=line[second],
            message=f"{second} (line {line[second]}): looks like {first} (line {line[first]}): the same letters up "
            "to case, width or compatibility forms; one dataset cannot tell the two apart: rename one",
        )


def _tags(values: list[str]) -> list[str]:
    """De-duplicated (order kept), never stripped: empty and padded tags are kept so that they are reported."""
    out: list[str] = []
    for t in map(nfc, values):
        if t not in out:
            out.append(t)
    return out


def _parse_jsonl(text: str, errors: FieldErrors) -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    for n, line in enumerate(_LINE_END.split(text), start=1):
        if not line.strip():
            continue
        try:
            obj = load(line)
        except JsonProblem as exc:
            why = f"not valid JSON ({exc.msg})" if exc.syntax else exc.msg
            errors.add(field="manifest", line=n, message=f"manifest line {n}: {why}")
            continue
        if not isinstance(obj, dict):
            errors.add(field="manifest", line=n, message=f"manifest line {n}: not a JSON object")
            continue
        unknown = [shorten(str(k), 40) for k in obj if k not in ROW_KEYS]
        if unknown:
            errors.add(
                field="manifest",
                item=shorten(obj["file"], MAX_FILE_NAME) if isinstance(obj.get("file"), str) else None,
                line=n,
                message=f"manifest line {n}: unknown key(s) {', '.join(map(repr, unknown))}: a line has "
                "`file` (an uploaded file), `candidates` and optionally `label`; images are never fetched from "
                "a URL",
            )
        file = obj.get("file")
        if not isinstance(file, str) or not clean_name(file):
            errors.add(field="file", line=n, message=f"manifest line {n}: `file` must be a non-empty string")
            continue
        file = clean_name(file)
        shown = shorten(file, MAX_FILE_NAME)
        cands = obj.get("candidates")
        if not isinstance(cands, list) or not all(isinstance(c, str) for c in cands):
            errors.add(
                field="candidates",
                item=shown,
                line=n,
                message=f"{shown}: `candidates` must be a list of strings (line {n})",
            )
            continue
        label = obj.get("label")
        if label is not None and not isinstance(label, str):
            errors.add(field="label", item=shown, line=n, message=f"{shown}: `label` must be a string")
            continue
        if label == "":
            errors.add(
                field="label",
                item=shown,
                line=n,
                message=f"{shown}: `label` is empty (line {n}): give one of the candidates, or leave `label` out "
                "for an item without a certain tag",
            )
        rows.append(ManifestRow(line=n, file=file, candidates=_tags(cands), label=nfc(label) if label else None))
    return rows


def _parse_csv(text: str, errors: FieldErrors) -> list[ManifestRow]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        return []
    except csv.Error as exc:
        errors.add(field="manifest", line=1, message=f"manifest line 1: bad CSV ({exc})")
        return []
    cols = [h.strip().lower() for h in header]
    if "file" not in cols or "candidates" not in cols:
        errors.add(
            field="manifest",
            line=1,
            message="manifest: a CSV manifest needs a header with `file` and `candidates` (and optionally `label`)",
        )
        return []
    unknown = [shorten(c, 40) for c in cols if c not in ROW_KEYS]
    if unknown:
        errors.add(
            field="manifest",
            line=1,
            message=f"manifest line 1: unknown column(s) {', '.join(map(repr, unknown))}: the columns are "
            "`file` (an uploaded file), `candidates` and optionally `label`; images are never fetched from a URL",
        )
    repeated = sorted({c for c in cols if cols.count(c) > 1})
    for col in repeated:
        errors.add(
            field="manifest",
            item=shorten(col, 40),
            line=1,
            message=f"manifest line 1: the column {shorten(col, 40)!r} appears {cols.count(col)} times in the "
            "header: name each column once",
        )
    if repeated:
        return []
    i_file, i_cand = cols.index("file"), cols.index("candidates")
    i_label = cols.index("label") if "label" in cols else None
    rows: list[ManifestRow] = []
    try:
        start = reader.line_num + 1
        for values in reader:
            n, start = start, reader.line_num + 1
            if reader.line_num > n and any("\n" in v or "\r" in v for v in values):
                errors.add(
                    field="manifest",
                    line=n,
                    message=f"manifest line {n}: unbalanced quote: {_runs_to(n, reader.line_num, text)}; close the "
                    'quote, or write a quote inside a value as "" (a line break inside a value is refused)',
                )
                continue
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(cols):
                errors.add(
                    field="manifest",
                    line=n,
                    message=f"manifest line {n}: {len(values)} columns, the header has {len(cols)}",
                )
                continue
            file = clean_name(values[i_file])
            if not file:
                errors.add(field="file", line=n, message=f"manifest line {n}: empty `file`")
                continue
            cands = _tags(values[i_cand].split("|")) if values[i_cand].strip() else []
            label = nfc(values[i_label]) if i_label is not None and values[i_label].strip() else None
            rows.append(ManifestRow(line=n, file=file, candidates=cands, label=label))
    except csv.Error as exc:
        errors.add(field="manifest", line=reader.line_num, message=f"manifest: bad CSV ({exc})")
    return rows


def _runs_to(start: int, end: int, text: str) -> str:
    """Where a quoted value opened on line ``start`` ended (line ``end``, maybe the file's last)."""
    if end >= len(_LINE_END.split(text.rstrip("\r\n"))):
        return f"the quoted value opened on line {start} is never closed (it runs to the end of the file)"
    return f"a quoted value opened on line {start} runs to line {end}"
