"""Per-person progress on a dataset: decisions per reviewer per day (UTC), from the review history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Dataset, Item, ItemReview, Owner


@dataclass
class DayCount:
    reviewer: str
    day: date
    decisions: int  # standing decisions (assign, accept, audit), undone ones left out
    undone: int
    skipped: int = 0


def reviewer_days(*, session: Session, owner: Owner, dataset_id: str, days: int = 14) -> list[DayCount]:
    """The dataset's decisions per reviewer per UTC day, the newest ``days`` days that have any, newest first.

    The caller has checked that the dataset is the owner's (the join on the owner keeps another team's out)."""
    day = func.date(ItemReview.created_at)
    rows = session.execute(
        select(ItemReview.reviewer, day.label("day"), ItemReview.undone, ItemReview.action, func.count())
        .join(Item, Item.id == ItemReview.item_id)
        .join(Dataset, Dataset.id == Item.dataset_id)
        .where(Item.dataset_id == dataset_id, Dataset.owner_id == owner.id, ItemReview.action != "undo")
        .group_by(ItemReview.reviewer, day, ItemReview.undone, ItemReview.action)
    ).all()
    table: dict[tuple[str, date], DayCount] = {}
    for reviewer, d, undone, action, n in rows:
        d = d if isinstance(d, date) else date.fromisoformat(str(d))
        row = table.setdefault((reviewer, d), DayCount(reviewer=reviewer, day=d, decisions=0, undone=0))
        if action == "skip":
            row.skipped += n
        elif undone:
            row.undone += n
        else:
            row.decisions += n
    recent = sorted({d for _, d in table}, reverse=True)[:days]
    return sorted((r for r in table.values() if r.day in recent), key=lambda r: (-r.day.toordinal(), r.reviewer))
