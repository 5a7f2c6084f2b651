"""The query parameters of every list endpoint: ``cursor`` (a previous page's ``next_cursor``) and ``limit``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from app.config import Settings

#: ``cursor``: opaque; refused with a 422 naming it when it is not a ``next_cursor`` of the same listing.
CursorQuery = Annotated[str | None, Query(max_length=500, description="`next_cursor` of the previous page.")]
#: ``limit``: capped at ``TAGSIFT_PAGE_LIMIT_MAX`` (larger values give the largest page, not an error).
LimitQuery = Annotated[
    int | None,
    Query(ge=1, description="Page size (default TAGSIFT_PAGE_LIMIT_DEFAULT, capped at TAGSIFT_PAGE_LIMIT_MAX)."),
]


def page_limit(limit: int | None, settings: Settings) -> int:
    """The page size to use for a requested ``limit``."""
    return min(limit or settings.page_limit_default, settings.page_limit_max)
