"""Small checks shared by the services and the upload parser: ids from the URL, stored text, values in messages.

PostgreSQL text columns cannot hold NUL, so a NUL anywhere in a value bound to a query raises a driver error
(a 500) instead of a clean answer: ids are checked before any query (an impossible id is simply not found),
and stored text (names, tags, file names) is checked for control characters with a message naming the field.
Error messages quote user values through :func:`shorten`, so a 10 MB tag never comes back in a 10 MB answer.
"""

from __future__ import annotations

import unicodedata

#: Longest id accepted in a URL / form before it is answered 404 without a query (ids are 32 hex characters).
MAX_ID_LENGTH = 64


def plausible_id(value: str) -> bool:
    """Whether ``value`` could be an id: 1 to 64 characters, no control characters, valid Unicode."""
    if not value or len(value) > MAX_ID_LENGTH:
        return False
    return not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def shorten(value: str, limit: int = 60) -> str:
    """``value`` for an error message: as is when short, else its start and its length."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} characters)"


def control_char_problem(value: str) -> str | None:
    """A message if ``value`` holds a control character (NUL, newline, ...) or an unpaired surrogate, else None."""
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            return f"contains the control character U+{ord(ch):04X}"
    return None
