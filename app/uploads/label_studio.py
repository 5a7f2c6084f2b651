"""Label Studio JSON exports as a manifest: tasks of an image classification project (``Choices``) into rows.

Recognised when the form's ``manifest_format`` is ``label-studio``, or (``manifest_format`` absent or ``auto``)
when the manifest's first non-blank character is ``[`` (a JSONL or CSV manifest never starts with one).

The rules, each with a test in ``tests/app/test_label_studio_import.py``:

* the export is a JSON list of tasks (Label Studio's "JSON" export; "JSON-MIN" is refused with a hint), each an
  object with ``data.image``; tasks without an ``id`` are named by their index;
* images are the uploaded files (``images`` or the ``archive``), matched to ``data.image`` by file name:
  the last path segment of ``data.image`` (of ``?d=`` for local-files URLs), URL-decoded; Label Studio's upload
  prefix (eight hex digits and a dash, ``1a2b3c4d-cat.jpg``) may be kept or dropped in the sent file's name.
  ``data.image`` is never fetched. Two sent files that both match (``a/cat.jpg`` and ``b/cat.jpg``, or
  ``1a2b3c4d-cat.jpg`` and ``cat.jpg``), or a task whose image was not sent, are errors. A file matched only
  without the prefix goes to a task that names it exactly, when one does (``cat.jpg`` to the task of ``cat.jpg``,
  not to the task of ``1a2b3c4d-cat.jpg``);
* candidates: the union of the choices of every annotation that was not cancelled (``was_cancelled``), so several
  choices in one annotation and annotators who disagree all become candidates. Only ``choices`` results count
  (other result types are ignored), and they must all come from one ``Choices`` control (``from_name``);
* a task nobody annotated takes its candidates from its predictions (prediction objects' choices, unioned).
  The open-source export writes predictions as integer ids, which hold no choices: they are ignored;
* a task with neither gets every class of the dataset as its candidates (the model decides; it will usually
  need review); a *skipped* task (every annotation cancelled) is not imported, and its image may be sent or not;
* a ``ground_truth`` annotation with a single choice becomes the item's ``label`` (a certain tag);
* classes: the dataset's (adding items; ``classes`` in the form appends new ones), the form's ``classes``, or,
  for a new dataset without ``classes``, every choice read (not a cancelled annotation's) in sorted order. A choice
  outside the classes is an error naming the task and the field.

Every problem is reported at once (``FieldErrors``, field = the path inside the task, item = ``task <id>``), and a
single problem stores nothing.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from app.checks import shorten
from app.config import Settings
from app.errors import FieldErrors
from app.names import nfc
from app.uploads.jsontext import JsonProblem, load
from app.uploads.manifests import ManifestRow
from app.uploads.rules import tag_problem

#: ``manifest_format`` values of the upload form.
MANIFEST_FORMATS = ("auto", "jsonl", "csv", "label-studio")

#: Label Studio's prefix on uploaded files: 8 hex digits and a dash (``1a2b3c4d-cat.jpg``).
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-(.+)$")


def is_label_studio(manifest: bytes, manifest_format: str | None) -> bool:
    """Whether the manifest is read as a Label Studio export (see the module docstring)."""
    if manifest_format == "label-studio":
        return True
    if manifest_format not in (None, "", "auto"):
        return False
    head = manifest[:4096].decode("utf-8-sig", errors="replace").lstrip()
    return head.startswith("[")


@dataclass
class LabelStudioManifest:
    rows: list[ManifestRow]
    classes: list[str] | None  # inferred (sorted) when no classes were known
    skipped: list[str] = field(default_factory=list)  # "task <id>" of the skipped tasks
    skipped_files: list[str] = field(default_factory=list)  # their sent images (left out, not an error)
    reported_files: list[str] = field(default_factory=list)  # sent files already named in a task's error


def image_names(ref: str) -> list[str]:
    """The file names ``data.image`` may have been sent under: its last segment, then without the upload prefix."""
    ref = ref.strip()
    parts = urlsplit(ref)
    path = parts.path
    d = parse_qs(parts.query).get("d")
    if d:  # /data/local-files/?d=folder/cat.jpg
        path = d[0]
    base = nfc(posixpath.basename(unquote(path.replace("\\", "/"))))
    names = [base] if base else []
    m = _UPLOAD_PREFIX.match(base)
    if m:
        names.append(m.group(1))
    return names


def parse_label_studio(
    data: bytes,
    *,
    file_names: list[str],
    classes: list[str] | None,
    settings: Settings,
    errors: FieldErrors,
) -> LabelStudioManifest:
    """Rows from a Label Studio export; ``classes`` None infers them. ``file_names``: the uploaded files' names."""
    out = LabelStudioManifest(rows=[], classes=None)
    tasks = _load_tasks(data, settings=settings, errors=errors)
    if tasks is None:
        return out

    by_name: dict[str, list[str]] = {}
    for name in file_names:
        by_name.setdefault(posixpath.basename(name), []).append(name)

    parsed: list[_Task] = []
    from_names: dict[str, str] = {}  # Choices control name -> first task/field that used it
    for index, task in enumerate(tasks):
        t = _read_task(index, task, errors, from_names)
        if t is not None:
            parsed.append(t)

    known = classes
    if known is None:
        seen = {c for t in parsed for c, _ in t.all_choices}
        out.classes = sorted(seen)
        known = out.classes
    known_set = set(known)
    order = {c: i for i, c in enumerate(known)}

    exact = {names[0] for t in parsed if (names := image_names(t.image))}  # the names tasks give in full
    used: dict[str, str] = {}  # sent file -> task that took it
    for t in parsed:
        _check_choices(t, known, known_set, settings=settings, errors=errors)
        file, problem, ambiguous = _match_file(t, by_name, exact)
        if t.skipped:
            out.skipped.append(t.name)
            out.skipped_files.extend([file] if file is not None else ambiguous)
            continue
        if problem is not None:
            out.reported_files.extend(ambiguous)
            errors.add(field="data.image", item=t.name, message=f"{t.name}: data.image {problem}")
            continue
        assert file is not None
        if file in used:
            errors.add(
                field="data.image",
                item=t.name,
                message=f"{t.name}: data.image {shorten(t.image, 200)!r} is the same file ({file}) as {used[file]}'s",
            )
            continue
        used[file] = t.name
        if t.candidates is None:
            candidates = list(known)
        else:
            candidates = sorted({c for c in t.candidates if c in known_set}, key=order.__getitem__)
        label = t.ground_truth if t.ground_truth in known_set else None
        out.rows.append(ManifestRow(line=t.index + 1, file=file, candidates=candidates, label=label))
    return out


def _load_tasks(data: bytes, *, settings: Settings, errors: FieldErrors) -> list[object] | None:
    """The export's list of tasks, or None (the problem recorded): UTF-8 JSON, a list, valid Unicode, not too long."""
    try:
        tasks = load(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        errors.add(field="manifest", message=f"manifest: not UTF-8 (invalid byte at offset {exc.start})")
        return None
    except JsonProblem as exc:
        why = f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})" if exc.syntax else exc.msg
        errors.add(field="manifest", line=exc.lineno or None, message=f"manifest: {why}")
        return None
    if not isinstance(tasks, list):
        errors.add(
            field="manifest",
            message=f"manifest: a Label Studio export is a JSON list of tasks, got {_json_type(tasks)}"
            " (export the project as 'JSON')",
        )
        return None
    if len(tasks) > settings.max_items_per_request:
        errors.add(
            field="manifest",
            message=f"manifest: {len(tasks)} tasks, over the limit of {settings.max_items_per_request} per request",
        )
        return None
    return tasks


def _check_choices(t: _Task, known: list[str], known_set: set[str], *, settings: Settings, errors: FieldErrors) -> None:
    """Every choice the task's annotations and predictions give is a valid tag among the ``known`` classes."""
    for choice, path in t.all_choices:
        problem = tag_problem(choice, settings)
        if problem is None and choice != choice.strip():
            problem = f"tag {shorten(choice)!r} has leading or trailing whitespace"
        if problem:
            errors.add(field=path, item=t.name, message=f"{t.name}: {path}: {problem}")
        elif choice not in known_set:
            errors.add(
                field=path,
                item=t.name,
                message=f"{t.name}: {path}: {shorten(choice)!r} is not one of the classes "
                f"({shorten(', '.join(known), 200) or 'none'}); send it in `classes` to add it",
            )


def _json_type(value: object) -> str:
    names = {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")


@dataclass
class _Task:
    index: int
    name: str  # "task <id>" for messages and FieldError.item
    image: str
    candidates: set[str] | None  # None: no information (every class)
    ground_truth: str | None
    skipped: bool
    all_choices: list[tuple[str, str]]  # (choice, field path) of every annotation and prediction read


def _task_name(index: int, task: object) -> str:
    tid = task.get("id") if isinstance(task, dict) else None
    if isinstance(tid, (int, str)) and not isinstance(tid, bool) and str(tid).strip():
        return f"task {shorten(str(tid), 40)}"
    return f"task at index {index}"


def _read_task(index: int, task: object, errors: FieldErrors, from_names: dict[str, str]) -> _Task | None:
    name = _task_name(index, task)
    if not isinstance(task, dict):
        errors.add(field="manifest", item=name, message=f"{name}: a task must be a JSON object")
        return None
    data = task.get("data")
    image = data.get("image") if isinstance(data, dict) else None
    if not isinstance(image, str) or not image.strip():
        hint = ""
        if not isinstance(data, dict) and "image" in task:
            hint = " (this looks like a 'JSON-MIN' export: export the project as 'JSON')"
        elif not isinstance(data, dict) and "file" in task:
            hint = " (manifest rows {file, candidates} go one per line, as JSONL, not in a JSON list)"
        errors.add(
            field="data.image",
            item=name,
            message=f"{name}: data.image is required (a string naming the task's image){hint}",
        )
        return None
    all_choices: list[tuple[str, str]] = []
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        errors.add(field="annotations", item=name, message=f"{name}: annotations must be a list")
        return None
    human: set[str] = set()
    usable = cancelled = 0
    truth: set[str] = set()
    for a_i, ann in enumerate(annotations):
        where = f"annotations[{a_i}]"
        if not isinstance(ann, dict):
            errors.add(field=where, item=name, message=f"{name}: {where} must be an object")
            continue
        if ann.get("was_cancelled") is True:
            cancelled += 1
            continue
        choices = _choices(ann.get("result", []), where, name, errors, from_names)
        all_choices.extend(choices)
        human.update(c for c, _ in choices)
        usable += 1
        if ann.get("ground_truth") is True:
            truth.update(c for c, _ in choices)
    predicted: set[str] = set()
    predictions = task.get("predictions", [])
    if not isinstance(predictions, list):
        errors.add(field="predictions", item=name, message=f"{name}: predictions must be a list")
        predictions = []
    for p_i, pred in enumerate(predictions):
        where = f"predictions[{p_i}]"
        if isinstance(pred, int) and not isinstance(pred, bool):
            continue  # the open-source export writes prediction ids: nothing to read
        if not isinstance(pred, dict):
            errors.add(field=where, item=name, message=f"{name}: {where} must be an object or a prediction id")
            continue
        choices = _choices(pred.get("result", []), where, name, errors, from_names)
        all_choices.extend(choices)
        predicted.update(c for c, _ in choices)
    skipped = cancelled > 0 and usable == 0
    if human:
        candidates: set[str] | None = human
    elif predicted and not skipped:
        candidates = predicted
    else:
        candidates = None
    return _Task(
        index=index,
        name=name,
        image=image,
        candidates=candidates,
        ground_truth=next(iter(truth)) if len(truth) == 1 else None,
        skipped=skipped,
        all_choices=all_choices,
    )


def _choices(
    result: object, where: str, name: str, errors: FieldErrors, from_names: dict[str, str]
) -> list[tuple[str, str]]:
    """(choice, field path) of the ``choices`` regions of an annotation's or prediction's ``result``."""
    if not isinstance(result, list):
        errors.add(field=f"{where}.result", item=name, message=f"{name}: {where}.result must be a list")
        return []
    out: list[tuple[str, str]] = []
    for r_i, region in enumerate(result):
        path = f"{where}.result[{r_i}]"
        if not isinstance(region, dict) or region.get("type") != "choices":
            continue  # other controls (rectangles, text areas, ratings) carry no class
        control = region.get("from_name")
        if isinstance(control, str):
            first = from_names.setdefault(control, f"{name} {path}")
            others = [c for c in from_names if c != control]
            if others and first == f"{name} {path}":
                errors.add(
                    field=f"{path}.from_name",
                    item=name,
                    message=f"{name}: {path}.from_name {shorten(control)!r}: choices come from several Choices "
                    f"controls ({', '.join(repr(shorten(c)) for c in from_names)}); tagsift reads one",
                )
        value = region.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            errors.add(
                field=f"{path}.value.choices",
                item=name,
                message=f"{name}: {path}.value.choices must be a list of strings",
            )
            continue
        out.extend((nfc(c), f"{path}.value.choices") for c in choices)
    return out


def _match_file(t: _Task, by_name: dict[str, list[str]], exact: set[str]) -> tuple[str | None, str | None, list[str]]:
    """(the sent file for the task's ``data.image``, or why none, and the files that matched when several did).

    A file matches by the name ``data.image`` gives, or by that name without Label Studio's upload prefix unless
    another task gives that shorter name in full (``exact``): then it is that task's file."""
    names = image_names(t.image)
    found: list[str] = []
    for i, name in enumerate(names):
        if i > 0 and name in exact:
            continue
        found.extend(f for f in by_name.get(name, []) if f not in found)
    if len(found) == 1:
        return found[0], None, []
    if found:
        shown = ", ".join(shorten(f, 100) for f in found[:5]) + (", ..." if len(found) > 5 else "")
        return None, f"{shorten(t.image, 200)!r}: several sent files match it ({shown}); send one", found
    shown = " or ".join(repr(n) for n in names) or "(no file name)"
    why = f"{shorten(t.image, 200)!r}: the image was not sent (send a file named {shown}; tagsift never fetches URLs)"
    return None, why, []
