"""The query parameters of every list endpoint: ``cursor`` (a previous page's ``next_cursor``) and ``limit``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from app.config import Settings

#: ``cursor`` of the lists ordered by ``(created_at, id)``: the last row's position, ``<created_at in microseconds
#: since 1970 UTC>_<id>`` (``app.services.pages``). Any position is a valid cursor (the page after it, maybe empty);
#: anything else is a 422 naming ``cursor``.
LIST_CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9a-f]{32}$"
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=49,
        pattern=LIST_CURSOR_PATTERN,
        description="`next_cursor` of the previous page (the last row's position: `<created_at µs>_<id>`).",
    ),
]
#: ``cursor`` of a dataset's items: the last item's upload sequence number (below 10^18, inside 64 bits).
ITEM_CURSOR_PATTERN = r"^(?:0|[1-9][0-9]{0,17})$"
ItemCursorQuery = Annotated[
    str | None,
    Query(
        max_length=18,
        pattern=ITEM_CURSOR_PATTERN,
        description="`next_cursor` of the previous page: the last item's upload sequence number. In `margin` order "
        "the page continues after that item's current margin (404 when the dataset has no such item).",
    ),
]
#: ``limit``: capped at ``TAGSIFT_PAGE_LIMIT_MAX`` (larger values give the largest page, not an error).
LimitQuery = Annotated[
    int | None,
    Query(ge=1, description="Page size (default TAGSIFT_PAGE_LIMIT_DEFAULT, capped at TAGSIFT_PAGE_LIMIT_MAX)."),
]


def page_limit(limit: int | None, settings: Settings) -> int:
    """The page size to use for a requested ``limit``."""
    return min(limit or settings.page_limit_default, settings.page_limit_max)
