"""Reading a folder and its manifest (CSV, JSONL or a Label Studio JSON export) into upload chunks.

The client never changes what a manifest says: a CSV row becomes the same JSONL object the server would read from
it, a JSONL object and a Label Studio task are sent as they are. Only the split into chunks is the client's.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from tagsift_client.errors import FieldProblem, TagsiftError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: Label Studio's upload prefix: ``1a2b3c4d-cat.jpg`` is ``cat.jpg``.
_LS_PREFIX = re.compile(r"^[0-9a-f]{8}-", re.IGNORECASE)


@dataclass
class Entry:
    """One image to upload: the name it is sent under (the manifest's), its path, size and manifest record."""

    file: str
    path: Path
    size: int
    record: dict[str, Any]


@dataclass
class Plan:
    """What one upload sends: the entries in manifest order, the format, the classes and a stable id."""

    kind: str  # "jsonl" (CSV manifests are sent as the same JSONL objects) or "label-studio"
    entries: list[Entry]
    classes: list[str]
    given_classes: list[str] | None = None  # the caller's ``classes`` (sent with every chunk)
    upload_id: str = ""
    extra_tasks: list[dict[str, Any]] = field(default_factory=list)  # LS tasks without an image to send

    def manifest(self, entries: list[Entry], *, with_extra: bool = False) -> tuple[str, bytes, str]:
        """(file name, bytes, media type) of the manifest of ``entries``."""
        if self.kind == "label-studio":
            tasks = [e.record for e in entries] + (self.extra_tasks if with_extra else [])
            return "manifest.json", json.dumps(tasks, ensure_ascii=False).encode(), "application/json"
        text = "".join(json.dumps(e.record, ensure_ascii=False) + "\n" for e in entries)
        return "manifest.jsonl", text.encode(), "application/x-ndjson"


def _problem(message: str, *, field: str = "manifest", item: str | None = None, line: int | None = None):
    return TagsiftError(
        f"{field}: {message}" + (f" ({item})" if item else ""),
        code="invalid_input",
        errors=[FieldProblem(field=field, message=message, item=item, line=line)],
    )


def _index_folder(folder: Path) -> tuple[dict[str, tuple[str, int]], dict[str, list[tuple[str, int]]]]:
    """Every file under ``folder`` (not in hidden folders), as (path, size), by its relative path and by its base
    name (``os.scandir``: a folder of 10,000 files is indexed in a fraction of a second)."""
    by_rel: dict[str, tuple[str, int]] = {}
    by_base: dict[str, list[tuple[str, int]]] = {}
    stack = [("", str(folder))]
    while stack:
        prefix, path = stack.pop()
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.is_dir():
                if not entry.name.startswith("."):
                    stack.append((f"{prefix}{entry.name}/", entry.path))
            elif entry.is_file():
                found = (entry.path, entry.stat().st_size)
                by_rel[prefix + entry.name] = found
                by_base.setdefault(entry.name, []).append(found)
    return by_rel, by_base


def _find(name: str, by_rel: dict, by_base: dict) -> tuple[str, int] | None:
    """(path, size) of the file a manifest names: its path in the folder, else its base name when unique."""
    if name in by_rel:
        return by_rel[name]
    found = by_base.get(name.rsplit("/", 1)[-1], [])
    return found[0] if len(found) == 1 else None


def detect_format(manifest: Path, data: bytes, fmt: str) -> str:
    """``jsonl``, ``csv`` or ``label-studio`` (as the server tells them apart: a leading ``[`` is Label Studio)."""
    if fmt != "auto":
        return fmt
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return "label-studio"
    suffix = manifest.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    first = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return "jsonl" if first == b"{" else "csv"


def _rows(fmt: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        out = []
        for row in reader:
            record: dict[str, Any] = {"file": row.get("file") or "", "candidates": []}
            candidates = row.get("candidates") or ""
            record["candidates"] = candidates.split("|") if candidates else []
            if row.get("label"):
                record["label"] = row["label"]
            out.append((reader.line_num, record))
        return out
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise _problem(f"line {number} is not JSON: {exc}", line=number) from None
        if not isinstance(record, dict):
            raise _problem(f"line {number} is not a JSON object", line=number)
        rows.append((number, record))
    return rows


def _ls_image_names(task: dict[str, Any]) -> list[str]:
    """The file names a Label Studio task's ``data.image`` may stand for (as the server matches them)."""
    image = (task.get("data") or {}).get("image")
    if not isinstance(image, str) or not image:
        return []
    parsed = urlparse(image)
    path = parse_qs(parsed.query).get("d", [parsed.path])[0]
    name = unquote(path.rstrip("/").rsplit("/", 1)[-1])
    stripped = _LS_PREFIX.sub("", name)
    return [name, stripped] if stripped != name else [name]


def _ls_choices(task: dict[str, Any]) -> set[str]:
    choices: set[str] = set()
    sources = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    sources += [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    for source in sources:
        for result in source.get("result") or []:
            if isinstance(result, dict) and result.get("type") == "choices":
                choices.update(c for c in (result.get("value") or {}).get("choices") or [] if isinstance(c, str))
    return choices


def _ls_skipped(task: dict[str, Any]) -> bool:
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    return bool(annotations) and all(a.get("was_cancelled") for a in annotations)


def plan_upload(
    folder: str | os.PathLike[str],
    manifest: str | os.PathLike[str] | None,
    *,
    manifest_format: str = "auto",
    classes: list[str] | None = None,
    scope: str = "",
) -> Plan:
    """Read ``folder`` and its manifest into a :class:`Plan` (every named image must be in the folder).

    Without a manifest, ``manifest.jsonl`` / ``manifest.csv`` / ``manifest.json`` in the folder is used."""
    root = Path(folder)
    if not root.is_dir():
        raise _problem(f"{root} is not a folder", field="folder", item=str(root))
    if manifest is None:
        found = [root / n for n in ("manifest.jsonl", "manifest.csv", "manifest.json") if (root / n).is_file()]
        if not found:
            raise _problem("no manifest given and none (manifest.jsonl/.csv/.json) in the folder", item=str(root))
        manifest = found[0]
    manifest_path = Path(manifest)
    data = manifest_path.read_bytes()
    fmt = detect_format(manifest_path, data, manifest_format)
    text = data.decode("utf-8-sig")
    by_rel, by_base = _index_folder(root)
    entries: list[Entry] = []
    extra: list[dict[str, Any]] = []
    tags: set[str] = set()
    if fmt == "label-studio":
        try:
            tasks = json.loads(text)
        except ValueError as exc:
            raise _problem(f"not JSON: {exc}") from None
        if not isinstance(tasks, list):
            raise _problem("a Label Studio export is a JSON list of tasks")
        for i, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise _problem("a task is not a JSON object", item=f"task {i}")
            tags |= _ls_choices(task)
            names = _ls_image_names(task)
            hit = next((p for n in names if (p := _find(n, by_rel, by_base)) is not None), None)
            if hit is None:
                if _ls_skipped(task) or not names:  # the server skips it, or names the problem itself
                    extra.append(task)
                    continue
                raise _problem(f"image {names[0]!r} is not in {root}", item=f"task {task.get('id', i)}")
            entries.append(Entry(file=os.path.basename(hit[0]), path=Path(hit[0]), size=hit[1], record=task))
        kind = "label-studio"
    else:
        for line, record in _rows(fmt, text):
            name = record.get("file")
            if not isinstance(name, str) or not name:
                raise _problem("`file` is missing", field="file", line=line)
            hit = _find(name, by_rel, by_base)
            if hit is None:
                raise _problem(f"not in {root}", field="file", item=name, line=line)
            candidates = record.get("candidates")
            if isinstance(candidates, list):
                tags.update(c for c in candidates if isinstance(c, str))
            entries.append(Entry(file=name, path=Path(hit[0]), size=hit[1], record=record))
        kind = "jsonl"
    plan = Plan(
        kind=kind,
        entries=entries,
        classes=list(classes) if classes else sorted(tags),
        given_classes=list(classes) if classes else None,
        extra_tasks=extra,
    )
    digest = hashlib.sha256(json.dumps([scope, plan.kind, plan.classes], ensure_ascii=False).encode())
    for e in entries:
        digest.update(json.dumps([e.file, e.size, e.record], sort_keys=True, ensure_ascii=False).encode())
    plan.upload_id = digest.hexdigest()[:32]
    return plan


def chunk_entries(entries: list[Entry], *, max_images: int, max_bytes: int) -> list[list[Entry]]:
    """Split ``entries`` in order into chunks of at most ``max_images`` images and ``max_bytes`` bytes of images
    (a single bigger image is a chunk of its own)."""
    chunks: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    for e in entries:
        if current and (len(current) >= max_images or size + e.size > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(e)
        size += e.size
    if current:
        chunks.append(current)
    return chunks


def chunk_key(upload_id: str, what: str, entries: list[Entry]) -> str:
    """The Idempotency-Key of one chunk: the same images of the same upload always get the same key."""
    digest = hashlib.sha256("\n".join(e.file for e in entries).encode()).hexdigest()[:24]
    return f"tagsift-client-{upload_id}-{what}-{digest}"
