"""The JSON the upload parser reads itself (JSONL lines, a Label Studio export, the ``classes`` field), bounded.

:func:`load` is the one call: a number of more than :data:`MAX_NUMBER_CHARS` characters, ``NaN``/``Infinity``,
nesting deeper than :data:`MAX_DEPTH` and an unpaired ``\\u`` surrogate are a :class:`JsonProblem` (a message for
the 422), never a ``ValueError`` or ``RecursionError`` escaping as a 500. (When the app has one bounded JSON reader
for everything it parses, this module's :func:`load` becomes a call to it.)
"""

from __future__ import annotations

import json

#: Deepest nesting accepted (a JSONL line needs 2 levels, a Label Studio export about 8).
MAX_DEPTH = 64
#: Longest number literal accepted, in characters (Python refuses integers of more than 4,300 digits with a
#: plain ValueError; no field here needs more than a few).
MAX_NUMBER_CHARS = 100


class JsonProblem(ValueError):
    """Why a text is not JSON the parser accepts: ``syntax`` (not JSON at all, at ``lineno``/``colno``/``pos``,
    1-based/0-based as :class:`json.JSONDecodeError`) or a bound (``msg`` says which)."""

    def __init__(self, msg: str, *, syntax: bool = False, lineno: int = 0, colno: int = 0, pos: int = 0) -> None:
        super().__init__(msg)
        self.msg, self.syntax, self.lineno, self.colno, self.pos = msg, syntax, lineno, colno, pos


def _number(kind: type) -> object:
    def parse(text: str) -> object:
        if len(text) > MAX_NUMBER_CHARS:
            raise JsonProblem(f"a number of {len(text)} characters, over the limit of {MAX_NUMBER_CHARS}")
        return kind(text)

    return parse


def _constant(name: str) -> object:
    raise JsonProblem(f"{name} is not a JSON number")


def load(text: str) -> object:
    """``text`` parsed as JSON within the bounds above, or :class:`JsonProblem`."""
    try:
        value = json.loads(text, parse_int=_number(int), parse_float=_number(float), parse_constant=_constant)
    except JsonProblem:
        raise
    except json.JSONDecodeError as exc:
        raise JsonProblem(exc.msg, syntax=True, lineno=exc.lineno, colno=exc.colno, pos=exc.pos) from None
    except RecursionError:
        raise JsonProblem(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # pragma: no cover - the hooks above bound what Python itself would refuse
        raise JsonProblem(str(exc)) from None
    _check_tree(value)
    return value


def _check_tree(value: object) -> None:
    """Depth and valid Unicode (a ``"\\ud800"`` escape is not text), walked without recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if not _is_text(node):
                raise JsonProblem("invalid Unicode (an unpaired \\u surrogate)")
            continue
        if not isinstance(node, (list, dict)):
            continue
        if depth > MAX_DEPTH:
            raise JsonProblem(f"nested more than {MAX_DEPTH} levels deep")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children)


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")  # fails only on unpaired surrogates
    except UnicodeEncodeError:
        return False
    return True
