"""Field rules shared by the form, the manifest, the archive and the JSON API: class lists, tags and file names."""

from __future__ import annotations

import json
import re

from app.checks import control_char_problem, shorten
from app.config import Settings
from app.errors import FieldErrors

#: Longest file name (the ``items.file`` column): a display name, never used as a path.
MAX_FILE_NAME = 500


#: A ``file`` like "http://host/x.jpg": tagsift never fetches images, they are uploaded.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


_DRIVE = re.compile(r"^[A-Za-z]:")


def clean_name(name: str) -> str:
    """A display name: '/' separators, no leading './' or '/'. Never used as a path."""
    name = name.replace("\\", "/").strip()
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def is_url(name: str) -> bool:
    """Whether a manifest's ``file`` is a URL ("http://host/x.jpg"), which is never fetched."""
    return _URL.match(name) is not None


def is_unsafe_path(name: str) -> bool:
    """Whether an archive member's name (``/`` separators) is absolute, has a drive or climbs with ``..``."""
    return name.startswith("/") or _DRIVE.match(name) is not None or ".." in name.split("/")


def parse_classes(text: str, *, settings: Settings, errors: FieldErrors) -> list[str] | None:
    """The ``classes`` form field: a JSON list of distinct, non-empty tags."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        errors.add(field="classes", message=f"classes: not valid JSON ({exc.msg} at char {exc.pos})")
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.add(field="classes", message="classes: must be a JSON list of strings")
        return None
    return check_classes(value, settings=settings, errors=errors)


def check_classes(value: list[str], *, settings: Settings, errors: FieldErrors) -> list[str]:
    """The classes as given; empty, padded, too long or repeated tags are recorded in ``errors``."""
    out: list[str] = []
    for i, tag in enumerate(value):
        problem = tag_problem(tag, settings)
        if problem:
            errors.add(field="classes", item=str(i), message=f"classes[{i}]: {problem}")
        elif tag in out:
            errors.add(field="classes", item=tag, message=f"classes[{i}]: {tag!r} is listed twice")
        else:
            out.append(tag)
    return out


def tag_problem(tag: str, settings: Settings) -> str | None:
    """Why a tag (a class or a candidate) cannot be stored, or None."""
    if not tag:
        return "empty tag"
    if tag != tag.strip():
        return f"tag {shorten(tag)!r} has whitespace at its start or end (tags are never stripped: remove it)"
    if len(tag) > settings.max_tag_length:
        return f"tag {tag[:40]!r}... is {len(tag)} characters, over the limit of {settings.max_tag_length}"
    problem = control_char_problem(tag)
    if problem:
        return f"tag {shorten(tag)!r} {problem}"
    return None


def file_name_problem(name: str) -> str | None:
    """Why a file name (a display name, never a path) cannot be stored, or None."""
    if len(name) > MAX_FILE_NAME:
        return f"the file name is {len(name)} characters, over the limit of {MAX_FILE_NAME}"
    problem = control_char_problem(name)
    return f"the file name {problem}" if problem else None


def has_lone_surrogate(value: object) -> bool:
    """Whether parsed JSON holds a string with an unpaired surrogate (a "\\ud800" escape: not text)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # fails only on unpaired surrogates
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False
