"""The one JSON reader for everything tagsift parses itself: bounded depth, number length and size.

Python's :func:`json.loads` alone turns hostile JSON into 500s: an integer of more than 4,300 digits raises a plain
``ValueError`` (CPython's int-to-str limit), nesting deeper than ~1,000 levels a ``RecursionError``, and it accepts
``NaN``/``Infinity`` (not JSON) and numbers like ``1e999`` (infinite). :func:`loads` refuses all of these with a
:class:`JsonRefused` whose ``path`` names the value (``lr``, ``tasks[3].data``) and whose ``reason`` says what is
wrong; :func:`read_field` turns that into the API's 422 naming the field and the item.

Limits (constants, not settings: no legitimate body comes near them):

- :data:`MAX_DEPTH` levels of ``[``/``{`` nesting (checked on the raw text before parsing, so no recursion);
- :data:`MAX_NUMBER_CHARS` characters in one number literal (a 64-bit integer has 20, a double ~25);
- ``NaN``, ``Infinity``, ``-Infinity`` and numbers that overflow a double are refused;
- strings must be valid Unicode (an unpaired ``\\ud800`` escape is refused), bytes must be UTF-8;
- ``max_bytes`` where the caller gives one.

JSONL (one JSON value per line, e.g. the upload manifests): split the text on ``"\\n"`` only (``text.split("\\n")``,
or ``bytes.split(b"\\n")`` before decoding) and call :func:`loads` on each line, numbering lines from 1. Never use
``str.splitlines()``: it also breaks at U+2028, U+2029, U+0085, U+000B/C and U+001C-1E, which JSON allows raw
inside strings, so a valid line would be split in two and every later line number shifted.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from app.errors import FieldError, InvalidInput

#: Deepest nesting of arrays and objects accepted.
MAX_DEPTH = 64
#: Longest number literal accepted, in characters (sign, digits, point and exponent included).
MAX_NUMBER_CHARS = 100

#: A string literal (its closing quote optional, so an unterminated one is consumed at once: linear time) or a bracket
_TOKENS = re.compile(r'"(?:[^"\\]+|\\.)*"?|[\[\]{}]', re.DOTALL)


class JsonRefused(ValueError):
    """Why a JSON text was refused: ``path`` names the value inside it ("" for the whole text)."""

    def __init__(self, reason: str, path: str = "", *, decode_error: json.JSONDecodeError | None = None) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path
        self.decode_error = decode_error  # where the text stops being JSON, for callers that report a position


class _Bad:
    """A value the parser met and the walk reports with its path (a too-long number, NaN, an infinity)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _number(text: str, kind: str) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        digits = sum(c.isdigit() for c in text)
        return _Bad(f"a number of {digits} digits, over the limit of {MAX_NUMBER_CHARS} characters")
    if kind == "int":
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        return _Bad(f"the number {text} is out of range (it overflows a double)")
    return value


def _constant(name: str) -> _Bad:
    return _Bad(f"{name} is not a JSON number (send a finite number or null)")


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than ``max_depth`` (brackets inside strings do not count), without recursion."""
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for m in _TOKENS.finditer(text):
        token = m.group()
        if token[0] == '"':
            continue
        depth += 1 if token in "[{" else -1
        if depth > max_depth:
            raise JsonRefused(f"nested more than {max_depth} levels deep (at {_line_col(text, m.start())})")


def _walk(value: Any) -> None:
    """Raise for the first :class:`_Bad` value or invalid string, naming its path."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, _Bad):
            raise JsonRefused(v.reason, path)
        if isinstance(v, str):
            _check_text(v, path)
        elif isinstance(v, dict):
            for k in reversed(list(v)):
                _check_text(k, path)
                stack.append((f"{path}.{k}" if path else k, v[k]))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", v[i]) for i in range(len(v) - 1, -1, -1))


def _check_text(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonRefused("invalid Unicode (an unpaired \\u surrogate)", path) from None


def loads(
    data: str | bytes, *, max_bytes: int | None = None, max_depth: int = MAX_DEPTH, allow_empty: bool = False
) -> Any:
    """Parse one JSON value within the limits above; :class:`JsonRefused` for anything else (never another error).

    ``allow_empty``: an empty (or all-whitespace) text is ``None`` rather than refused.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise JsonRefused(f"{len(data)} bytes, over the limit of {max_bytes}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    else:
        text = data
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        if allow_empty:
            return None
        raise JsonRefused("empty: send a JSON value")
    check_depth(text, max_depth)
    try:
        value = json.loads(
            text,
            parse_int=lambda s: _number(s, "int"),
            parse_float=lambda s: _number(s, "float"),
            parse_constant=_constant,
        )
    except json.JSONDecodeError as exc:
        raise JsonRefused(
            f"not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno})", decode_error=exc
        ) from None
    except (ValueError, RecursionError, OverflowError) as exc:  # belt and braces: never a 500
        raise JsonRefused(f"not valid JSON ({type(exc).__name__})") from None
    _walk(value)
    return value


def read_field(data: str | bytes, *, field: str, item: str | None = None, line: int | None = None, **limits) -> Any:
    """:func:`loads` for one request field: a refusal is the API's 422 naming ``field`` (and ``item``, or the path
    inside the value when no item is given)."""
    try:
        return loads(data, **limits)
    except JsonRefused as exc:
        where = f"{field}.{exc.path}" if exc.path and not exc.path.startswith("[") else f"{field}{exc.path}"
        message = f"{where}: {exc.reason}"
        if line is not None:
            message = f"{message} (line {line})"
        raise InvalidInput(
            message, errors=[FieldError(field=field, item=item or exc.path or None, line=line, message=message)]
        ) from None
