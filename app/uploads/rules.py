"""Field rules shared by the form, the manifest and the JSON API: class lists, tags and file names."""

from __future__ import annotations

import json
import re

from app.api.errors import FieldErrors
from app.config import Settings
from app.services.checks import control_char_problem, shorten

#: Longest file name (the ``items.file`` column): a display name, never used as a path.
MAX_FILE_NAME = 500


#: A ``file`` like "http://host/x.jpg": tagsift never fetches images, they are uploaded.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


_DRIVE = re.compile(r"^[A-Za-z]:")


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
        problem = _tag_problem(tag, settings)
        if problem:
            errors.add(field="classes", item=str(i), message=f"classes[{i}]: {problem}")
        elif tag in out:
            errors.add(field="classes", item=tag, message=f"classes[{i}]: {tag!r} is listed twice")
        else:
            out.append(tag)
    return out


def _tag_problem(tag: str, settings: Settings) -> str | None:
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


def _file_name_problem(name: str) -> str | None:
    """Why a file name (a display name, never a path) cannot be stored, or None."""
    if len(name) > MAX_FILE_NAME:
        return f"the file name is {len(name)} characters, over the limit of {MAX_FILE_NAME}"
    problem = control_char_problem(name)
    return f"the file name {problem}" if problem else None
