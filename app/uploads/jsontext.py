"""The JSON the upload parser reads itself (JSONL lines, a Label Studio export, the ``classes`` field), bounded.

:func:`load` is the one call, and it reads through the app's one bounded JSON reader (:mod:`app.jsonread`): a
number literal over its length limit, ``NaN``/``Infinity``, nesting deeper than its depth limit and an unpaired
``\\u`` surrogate are a :class:`JsonProblem` (a message for the 422), never a ``ValueError`` or ``RecursionError``
escaping as a 500. A text that is not JSON at all keeps the position the parser gave (``syntax``), which the
manifest and Label Studio readers put in their messages.
"""

from __future__ import annotations

from app.jsonread import JsonRefused, loads


class JsonProblem(ValueError):
    """Why a text is not JSON the parser accepts: ``syntax`` (not JSON at all, at ``lineno``/``colno``/``pos``,
    1-based/0-based as :class:`json.JSONDecodeError`) or a bound (``msg`` says which)."""

    def __init__(self, msg: str, *, syntax: bool = False, lineno: int = 0, colno: int = 0, pos: int = 0) -> None:
        super().__init__(msg)
        self.msg, self.syntax, self.lineno, self.colno, self.pos = msg, syntax, lineno, colno, pos


def load(text: str) -> object:
    """``text`` parsed as JSON within :mod:`app.jsonread`'s bounds, or :class:`JsonProblem`."""
    if not text.strip():
        raise JsonProblem("Expecting value", syntax=True, lineno=1, colno=len(text) + 1, pos=len(text))
    try:
        return loads(text)
    except JsonRefused as exc:
        err = exc.decode_error
        if err is not None:
            raise JsonProblem(err.msg, syntax=True, lineno=err.lineno, colno=err.colno, pos=err.pos) from None
        raise JsonProblem(exc.reason) from None
