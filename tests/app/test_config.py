"""Settings refuse values the database cannot hold, with a message naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import MAX_TAG_COLUMN, Settings
from app.models import Item


def test_tag_length_limit_cannot_exceed_the_tag_column(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Item.__table__.c.label.type.length == Item.__table__.c.given_label.type.length == MAX_TAG_COLUMN
    for bad in ("201", "0"):
        monkeypatch.setenv("TAGSIFT_MAX_TAG_LENGTH", bad)
        with pytest.raises(ValidationError, match=f"TAGSIFT_MAX_TAG_LENGTH must be from 1 to 200.*got {bad}"):
            Settings()
    monkeypatch.setenv("TAGSIFT_MAX_TAG_LENGTH", "200")
    assert Settings().max_tag_length == 200
