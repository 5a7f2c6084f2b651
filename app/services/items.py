"""Items: the lists and the review queue (cursor pagination), one item, and its image bytes.

Pagination is keyset-based: the cursor is the last item's upload sequence number, so pages stay stable while the
worker writes labels. ``order=upload`` (default) sorts by upload order; ``order=margin`` sorts by margin ascending
(the most doubtful first; unlabelled items, margin null, come last), ties by upload order, and continues after the
cursor item's current margin (a cursor naming no item of the dataset is a 404 there).

A reviewer's decisions (a tag, an undo, the history) are ``app.services.reviews``.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import BigInteger, Float, Select, literal, select, tuple_
from sqlalchemy.orm import Session

from app.checks import shorten
from app.config import Settings
from app.errors import FieldError, InvalidInput, NotFound
from app.models import Dataset, Item, Owner, score_key
from app.schemas import ItemList, ItemRead
from app.services.datasets import get_dataset
from app.services.lookup import get_owned
from app.storage import BlobStore

ItemOrder = Literal["upload", "margin"]
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
        probs=item.probs,
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


def page_statement(
    dataset_id: str, *, needs_review: bool | None, order: ItemOrder, after: int | tuple[float, int] | None
) -> Select:
    """A page's query before its LIMIT: the dataset's items (``needs_review`` filters the review queue) in
    ``order``, after the position ``after`` (None: from the start; upload order: a seq; margin order: the cursor
    item's ``(key, seq)``).

    Margin order sorts by ``coalesce(margin, 2.0), seq`` and continues with the row value ``(key, seq) > (k, s)``:
    both spell the expression of the ``ix_items_margin_order`` / ``ix_items_review_margin`` indexes, so a page is a
    range scan of one of them from the cursor on, in index order, at any depth (``docs/bench-scale.md`` shows the
    plans)."""
    stmt = select(Item).where(Item.dataset_id == dataset_id)
    if needs_review is not None:
        stmt = stmt.where(Item.needs_review == needs_review)
    if order == "margin":
        key = score_key(Item.margin)
        if after is not None:
            k, s = after  # bound with the columns' types: a seq above 2^31 is a BIGINT, not an INTEGER
            stmt = stmt.where(tuple_(key, Item.seq) > tuple_(literal(k, Float), literal(s, BigInteger)))
        return stmt.order_by(key, Item.seq)
    if after is not None:
        stmt = stmt.where(Item.seq > after)
    return stmt.order_by(Item.seq)


def list_total(dataset: Dataset, *, needs_review: bool | None) -> int:
    """The ``total`` of a listing (over every page): from the dataset's counts, no count(*) of its items."""
    items, review = dataset.item_count or 0, dataset.review_count or 0
    return items if needs_review is None else review if needs_review else items - review


def cursor_position(session: Session, dataset_id: str, order: ItemOrder, cursor: str) -> int | tuple[float, int]:
    """The position a cursor names: its seq (upload order), or the cursor item's current ``(key, seq)`` in margin
    order (404 naming ``cursor`` when the dataset has no item at that seq)."""
    s = _decode_cursor(cursor)
    if order != "margin":
        return s
    k = session.scalar(select(score_key(Item.margin)).where(Item.dataset_id == dataset_id, Item.seq == s))
    if k is None:
        raise NotFound(
            f"cursor: dataset {dataset_id} has no item at position {s} to continue the margin order after",
            code="cursor_not_found",
            errors=[FieldError(field="cursor", message="cursor: no item at this position")],
        )
    return float(k), s


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
    total = list_total(dataset, needs_review=needs_review)
    after = cursor_position(session, dataset.id, order, cursor) if cursor else None
    stmt = page_statement(dataset.id, needs_review=needs_review, order=order, after=after)
    items = list(session.scalars(stmt.limit(limit + 1)))
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = str(items[-1].seq)
    return ItemList(data=[item_read(i, settings) for i in items], next_cursor=next_cursor, total=total)


def get_item(*, session: Session, owner: Owner, item_id: str) -> Item:
    """The owner's item; 404 for a missing id and for another owner's."""
    return get_owned(session, Item, item_id, owner=owner, what="item")


def read_item(*, session: Session, owner: Owner, item_id: str, settings: Settings) -> ItemRead:
    return item_read(get_item(session=session, owner=owner, item_id=item_id), settings)


def item_image(*, session: Session, storage: BlobStore, owner: Owner, item_id: str) -> tuple[bytes, str, str]:
    """(bytes, media type, sha256) of the item's image."""
    item = get_item(session=session, owner=owner, item_id=item_id)
    try:
        data = storage.get(item.sha256)
    except FileNotFoundError:
        raise NotFound(f"item {item_id}: the image blob is missing from storage", code="blob_missing") from None
    return data, media_type(data), item.sha256


def media_type(data: bytes) -> str:
    """The media type of an image's bytes, by its leading bytes (``application/octet-stream`` when unknown)."""
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
