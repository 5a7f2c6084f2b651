"""Field rules shared by the form, the manifest, the archive and the JSON API: class lists, tags and file names."""

from __future__ import annotations

import re

from app.checks import control_char_problem, shorten
from app.config import Settings
from app.errors import FieldError, FieldErrors
from app.names import invisible_problem, look_alikes, nfc
from app.uploads.jsontext import JsonProblem, load

#: Longest file name (the ``items.file`` column): a display name, never used as a path.
MAX_FILE_NAME = 500


#: A ``file`` like "http://host/x.jpg": tagsift never fetches images, they are uploaded.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


_DRIVE = re.compile(r"^[A-Za-z]:")


def clean_name(name: str) -> str:
    """A display name: NFC, '/' separators, no leading './' or '/'. Never used as a path."""
    name = nfc(name).replace("\\", "/").strip()
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def is_url(name: str) -> bool:
    """Whether a manifest's ``file`` is a URL ("http://host/x.jpg"), which is never fetched."""
    return _URL.match(name) is not None


def is_unsafe_path(name: str) -> bool:
    """Whether an archive member's name (``/`` separators) is absolute, has a drive or climbs with ``..``."""
    return name.startswith("/") or _DRIVE.match(name) is not None or ".." in name.split("/")


def parse_classes(
    text: str, *, settings: Settings, errors: FieldErrors, known: list[str] | None = None
) -> list[str] | None:
    """The ``classes`` form field: a JSON list of distinct, non-empty tags (none like one of ``known``)."""
    try:
        value = load(text)
    except JsonProblem as exc:
        why = f"not valid JSON ({exc.msg} at char {exc.pos})" if exc.syntax else exc.msg
        errors.add(field="classes", message=f"classes: {why}")
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.add(field="classes", message="classes: must be a JSON list of strings")
        return None
    return check_classes(value, settings=settings, errors=errors, known=known)


def check_classes(
    value: list[str],
    *,
    settings: Settings,
    errors: FieldErrors,
    known: list[str] | None = None,
    ambiguous: list[FieldError] | None = None,
) -> list[str]:
    """The classes as given, in NFC; empty, padded, too long, repeated or look-alike tags (among them, or with one
    of the ``known`` classes) are recorded in ``errors``, and the ambiguities (two different strings that are one
    name) also in ``ambiguous``: a JSON Schema cannot describe those."""
    out: list[str] = []
    given: dict[str, str] = {}  # NFC tag -> the string that gave it
    for i, (raw, tag) in enumerate((t, nfc(t)) for t in value):
        problem = tag_problem(tag, settings)
        if problem:
            errors.add(field="classes", item=str(i), message=f"classes[{i}]: {problem}")
        elif tag in out:
            same = "" if given[tag] == raw else " (the same text in another Unicode form: names are compared in NFC)"
            errors.add(field="classes", item=tag, message=f"classes[{i}]: {tag!r} is listed twice{same}")
            if same and ambiguous is not None:
                ambiguous.append(errors[-1])
        else:
            out.append(tag)
            given[tag] = raw
    start = len(errors)
    look_alike_classes(out, known=known or [], errors=errors)
    if ambiguous is not None:
        ambiguous.extend(errors[start:])
    return out


def look_alike_classes(classes: list[str], *, known: list[str], errors: FieldErrors) -> None:
    """Two classes that render alike (:func:`app.names.look_alikes`) are an error naming both."""
    for first, second in look_alikes(classes, known=known):
        errors.add(
            field="classes",
            item=shorten(second),
            message=f"classes: {shorten(first)!r} and {shorten(second)!r} look alike (the same letters up to case, "
            "width or compatibility forms): one dataset cannot tell them apart; use one of them",
        )


def tag_problem(tag: str, settings: Settings) -> str | None:
    """Why a tag (a class or a candidate) cannot be stored, or None."""
    if not tag:
        return "empty tag"
    if tag != tag.strip():
        return f"tag {shorten(tag)!r} has whitespace at its start or end (tags are never stripped: remove it)"
    if len(tag) > settings.max_tag_length:
        return f"tag {tag[:40]!r}... is {len(tag)} characters, over the limit of {settings.max_tag_length}"
    problem = control_char_problem(tag) or invisible_problem(tag)
    if problem:
        return f"tag {shorten(tag)!r} {problem}"
    return None


def file_name_problem(name: str) -> str | None:
    """Why a file name (a display name, never a path) cannot be stored, or None."""
    if len(name) > MAX_FILE_NAME:
        return f"the file name is {len(name)} characters, over the limit of {MAX_FILE_NAME}"
    problem = control_char_problem(name) or invisible_problem(name)
    return f"the file name {problem}" if problem else None
