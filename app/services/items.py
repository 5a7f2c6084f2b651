"""Items: the review queue (cursor pagination), a reviewer's tag, and the image bytes.

Pagination is keyset-based: the cursor is the last item's upload sequence number, so pages stay stable while the
worker writes labels. ``order=upload`` (default) sorts by upload order; ``order=margin`` sorts by margin ascending
(the most doubtful first; unlabelled items, margin null, come last), ties by upload order, and continues after the
cursor item's current margin (a cursor naming no item of the dataset is a 404 there).

A reviewer's tag (``PATCH /items/{id}``) must be one of the dataset's classes (a tag outside them answers 422),
exactly as stored (a tag with whitespace at its ends answers 422: it is never stripped silently). A tag outside the
item's candidate set (the weak label was wrong) answers 422 too, unless the body asks for the widening explicitly
with ``"add_to_candidates": true``: the tag is then added to the candidates, so that the candidate set always
contains the tag. The item becomes certain: ``label_source="reviewer"``, confidence 1, margin 1, ``needs_review``
false, and later jobs treat it as a single-candidate item. The owner's webhooks get an ``item.reviewed`` event,
written in the same transaction (``app.services.webhooks``).
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, object_session

from app.api.errors import FieldError, InvalidInput, NotFound
from app.config import Settings, get_settings
from app.models import Item, Owner, utcnow
from app.schemas import ItemList, ItemRead, ItemUpdate
from app.services.checks import shorten
from app.services.datasets import get_dataset
from app.services.lookup import get_owned
from app.services.webhooks import emit
from app.storage import BlobStore

ItemOrder = Literal["upload", "margin"]
_NO_MARGIN = 2.0  # sorts after every real margin (margins lie in [0, 1])
MAX_SEQ = 2**63 - 1  # items.seq is a signed 64-bit integer: a larger cursor key is refused, not sent to the driver


def image_url(item_id: str, settings: Settings) -> str:
    return f"{settings.public_url.rstrip('/')}/items/{item_id}/image"


def item_read(item: Item, settings: Settings) -> ItemRead:
    return ItemRead(
        id=item.id,
        dataset_id=item.dataset_id,
        file=item.file,
        sha256=item.sha256,
        width=item.width,
        height=item.height,
        candidates=item.candidates,
        given_label=item.given_label,
        label=item.label,
        confidence=item.confidence,
        margin=item.margin,
        label_source=item.label_source,
        needs_review=bool(item.needs_review),
        image_url=image_url(item.id, settings),
    )


def _decode_cursor(cursor: str) -> int:
    """The upload sequence number of a cursor (the route's pattern checks its form); 422 naming ``cursor``."""
    if not cursor.isdigit() or int(cursor) > MAX_SEQ:  # keys are bound to SQL: within a signed 64-bit integer
        raise InvalidInput(
            f"cursor: {shorten(cursor)!r} is not an item position (an upload sequence number below 2^63)",
            errors=[FieldError(field="cursor", message="cursor: not a `next_cursor` of this listing")],
        )
    return int(cursor)


def list_items(
    *,
    session: Session,
    owner: Owner,
    dataset_id: str,
    settings: Settings,
    cursor: str | None,
    limit: int,
    needs_review: bool | None,
    order: ItemOrder,
) -> ItemList:
    """One page of the dataset's items; ``needs_review`` filters the review queue."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    stmt = select(Item).where(Item.dataset_id == dataset.id)
    if needs_review is not None:
        stmt = stmt.where(Item.needs_review == needs_review)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    if order == "margin":
        key = func.coalesce(Item.margin, _NO_MARGIN)
        if cursor:
            s = _decode_cursor(cursor)
            k = session.scalar(select(key).where(Item.dataset_id == dataset.id, Item.seq == s))
            if k is None:
                raise NotFound(
                    f"cursor: dataset {dataset.id} has no item at position {s} to continue the margin order after",
                    code="cursor_not_found",
                    errors=[FieldError(field="cursor", message="cursor: no item at this position")],
                )
            stmt = stmt.where(or_(key > k, and_(key == k, Item.seq > s)))
        stmt = stmt.order_by(key, Item.seq)
    else:
        if cursor:
            stmt = stmt.where(Item.seq > _decode_cursor(cursor))
        stmt = stmt.order_by(Item.seq)
    items = list(session.scalars(stmt.limit(limit + 1)))
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = str(items[-1].seq)
    return ItemList(data=[item_read(i, settings) for i in items], next_cursor=next_cursor, total=total)


def get_item(*, session: Session, owner: Owner, item_id: str) -> Item:
    """The owner's item; 404 for a missing id and for another owner's."""
    return get_owned(session, Item, item_id, owner=owner, what="item")


def review_item(*, session: Session, owner: Owner, item_id: str, item_in: ItemUpdate, settings: Settings) -> ItemRead:
    """A reviewer sets the tag (see the module docstring for the rules)."""
    item = get_item(session=session, owner=owner, item_id=item_id)
    set_reviewer_label(item, item_in.label, add_to_candidates=item_in.add_to_candidates)
    session.commit()
    return item_read(item, settings)


def set_reviewer_label(item: Item, label: str, *, add_to_candidates: bool = False) -> None:
    """The one write of a reviewer's tag (``PATCH /items/{id}``, Label Studio annotations); the caller commits.

    A tag outside the item's candidates is refused unless ``add_to_candidates`` (widening is asked for)."""
    classes = item.dataset.classes
    problem = None
    if label != label.strip():
        problem = f"label: {shorten(label)!r} has whitespace at its start or end (tags are never stripped)"
    elif label not in classes:
        problem = f"label: {shorten(label)!r} is not one of the dataset's classes"
    elif label not in item.candidates and not add_to_candidates:
        problem = (
            f"label: {shorten(label)!r} is not among item {item.id}'s candidates "
            f'({", ".join(map(repr, item.candidates))}); send "add_to_candidates": true to add it'
        )
    if problem:
        raise InvalidInput(problem, errors=[FieldError(field="label", item=item.id, message=problem)])
    previous = {"label": item.label, "label_source": item.label_source}
    if label not in item.candidates:
        item.candidates = [*item.candidates, label]
    item.label = label
    item.label_source = "reviewer"
    item.confidence = 1.0
    item.margin = 1.0
    item.needs_review = False
    item.model_id = None
    item.updated_at = utcnow()
    # the owner's webhooks hear of it in this transaction (app.services.webhooks)
    data = {"item": item_read(item, get_settings()).model_dump(mode="json"), "previous": previous}
    emit(object_session(item), owner_id=item.dataset.owner_id, event="item.reviewed", data=data)


def read_item(*, session: Session, owner: Owner, item_id: str, settings: Settings) -> ItemRead:
    return item_read(get_item(session=session, owner=owner, item_id=item_id), settings)


def item_image(*, session: Session, storage: BlobStore, owner: Owner, item_id: str) -> tuple[bytes, str, str]:
    """(bytes, media type, sha256) of the item's image."""
    item = get_item(session=session, owner=owner, item_id=item_id)
    try:
        data = storage.get(item.sha256)
    except FileNotFoundError:
        raise NotFound(f"item {item_id}: the image blob is missing from storage", code="blob_missing") from None
    return data, _media_type(data), item.sha256


def _media_type(data: bytes) -> str:
    sigs = [
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"GIF8", "image/gif"),
        (b"BM", "image/bmp"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
    ]
    for sig, media in sigs:
        if data.startswith(sig):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"
