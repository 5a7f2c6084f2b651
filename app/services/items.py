"""Items: the review queue (cursor pagination), a reviewer's tag, and the image bytes.

Pagination is keyset-based with an opaque cursor (base64url JSON of the last row's sort key), so pages stay
stable while the worker writes labels. ``order=upload`` (default) sorts by upload order; ``order=margin`` sorts
by margin ascending (the most doubtful first; unlabelled items, margin null, come last), ties by upload order.

A reviewer's tag (``PATCH /items/{id}``) must be one of the dataset's classes (a tag outside them answers 422).
It may lie outside the item's candidate set (the weak label was wrong): it is then added to the candidates so
that the candidate set always contains the tag. The item becomes certain: ``label_source="reviewer"``,
confidence 1, margin 1, ``needs_review`` false, and later jobs treat it as a single-candidate item. The owner's
webhooks get an ``item.reviewed`` event, written in the same transaction (``app.services.webhooks``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.api.errors import FieldError, InvalidInput, NotFound
from app.config import Settings
from app.models import Item, Owner, utcnow
from app.schemas import ItemList, ItemRead, ItemUpdate
from app.services.checks import shorten
from app.services.datasets import get_dataset
from app.services.lookup import get_owned
from app.services.webhooks import emit
from app.storage import BlobStore

ItemOrder = Literal["upload", "margin"]
_NO_MARGIN = 2.0  # sorts after every real margin (margins lie in [0, 1])


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


def _encode_cursor(order: str, key: float | None, seq: int) -> str:
    raw = json.dumps({"o": order, "k": key, "s": seq}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, order: str) -> tuple[float | None, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        if data["o"] != order:
            raise ValueError("order")
        key = None if data["k"] is None else float(data["k"])
        return key, int(data["s"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidInput(
            "cursor: not a cursor from a previous page of this listing (with the same `order`)",
            errors=[FieldError(field="cursor", message="cursor: invalid or from another `order`")],
        ) from None


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
    if order == "margin":
        key = func.coalesce(Item.margin, _NO_MARGIN)
        if cursor:
            k, s = _decode_cursor(cursor, order)
            stmt = stmt.where(or_(key > k, and_(key == k, Item.seq > s)))
        stmt = stmt.order_by(key, Item.seq)
    else:
        if cursor:
            _, s = _decode_cursor(cursor, order)
            stmt = stmt.where(Item.seq > s)
        stmt = stmt.order_by(Item.seq)
    items = list(session.scalars(stmt.limit(limit + 1)))
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        last = items[-1]
        k = (last.margin if last.margin is not None else _NO_MARGIN) if order == "margin" else None
        next_cursor = _encode_cursor(order, k, last.seq)
    return ItemList(data=[item_read(i, settings) for i in items], next_cursor=next_cursor)


def get_item(*, session: Session, owner: Owner, item_id: str) -> Item:
    """The owner's item; 404 for a missing id and for another owner's."""
    return get_owned(session, Item, item_id, owner=owner, what="item")


def review_item(*, session: Session, owner: Owner, item_id: str, item_in: ItemUpdate, settings: Settings) -> ItemRead:
    """A reviewer sets the tag (see the module docstring for the rules)."""
    item = get_item(session=session, owner=owner, item_id=item_id)
    label = item_in.label.strip()
    classes = item.dataset.classes
    if label not in classes:
        raise InvalidInput(
            f"label: {shorten(label)!r} is not one of the dataset's classes",
            errors=[
                FieldError(field="label", item=item.id, message=f"label: {shorten(label)!r} is not one of the classes")
            ],
        )
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
    read = item_read(item, settings)
    data = {"item": read.model_dump(mode="json"), "previous": previous}
    emit(session, owner_id=owner.id, event="item.reviewed", data=data)
    session.commit()
    return read


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
