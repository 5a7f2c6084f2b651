"""Reviewer decisions on items: a tag assigned or the model's accepted, an undo, an outside decision withdrawn, and
the history of each item.

A reviewer's tag (``PATCH /items/{id}``) must be one of the dataset's classes (a tag outside them answers 422),
exactly as stored (a tag with whitespace at its ends answers 422: it is never stripped silently). A tag outside the
item's candidate set (the weak label was wrong) answers 422 too, unless the body asks for the widening explicitly
with ``"add_to_candidates": true``: the tag is then added to the candidates, so that the candidate set always
contains the tag. The item becomes certain: ``label_source="reviewer"``, confidence 1, margin 1, ``needs_review``
false, and later jobs treat it as a single-candidate item.

Every reviewer decision (assign a tag, accept the model's tag, undo; from the API, the web app or Label Studio)
goes through :func:`apply_decision` (:func:`decide` for the API and the web app) or :func:`undo_last`, which write
one ``item_reviews`` row with who, when, the previous tag, its source and the model that proposed it; an undo
restores the state that row saved. A decision that came from outside (a Label Studio annotation) names it in
``source_ref``, and :func:`withdraw_source` undoes it when it is withdrawn there. Each decision and each undo is
an ``item.reviewed`` event for the owner's webhooks, written in the same transaction (``app.services.webhooks``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.checks import shorten
from app.config import Settings, get_settings
from app.errors import Conflict, FieldError, InvalidInput, NotFound
from app.models import Dataset, Item, ItemReview, Owner, utcnow
from app.schemas import ItemRead, ItemUpdate
from app.services.datasets import add_to_review_count, lock_dataset
from app.services.items import get_item, item_read
from app.services.lookup import get_owned
from app.services.refits import note_decision, request_refit
from app.services.webhooks import emit


@dataclass(frozen=True)
class Reviewer:
    """Who decides: the API key's id and its name (recorded in the review history)."""

    api_key_id: str | None
    name: str


#: "audit": a person's true tag of an item of an audit sample (app.services.audits), checked like "assign"
ReviewAction = Literal["assign", "accept", "audit"]


def _check_label(item: Item, label: str, *, add_to_candidates: bool) -> str:
    """``label`` as a reviewer's tag of ``item``: a class, exactly as stored, within the candidates unless widening
    is asked for; 422 naming the field and the item otherwise."""
    problem = None
    if label != label.strip():
        problem = f"label: {shorten(label)!r} has whitespace at its start or end (tags are never stripped)"
    elif label not in item.dataset.classes:
        problem = f"label: {shorten(label)!r} is not one of the dataset's classes"
    elif label not in item.candidates and not add_to_candidates:
        problem = (
            f"label: {shorten(label)!r} is not among item {item.id}'s candidates "
            f'({", ".join(map(repr, item.candidates))}); send "add_to_candidates": true to add it'
        )
    if problem:
        raise InvalidInput(problem, errors=[FieldError(field="label", item=item.id, message=problem)])
    return label


def _record(
    session: Session, item: Item, reviewer: Reviewer, action: str, label: str | None, source_ref: str | None = None
) -> ItemReview:
    review = ItemReview(
        item_id=item.id,
        api_key_id=reviewer.api_key_id,
        reviewer=reviewer.name,
        action=action,
        label=label,
        previous_label=item.label,
        previous_source=item.label_source,
        previous_confidence=item.confidence,
        previous_margin=item.margin,
        previous_needs_review=bool(item.needs_review),
        previous_model_id=item.model_id,
        previous_candidates=list(item.candidates),
        undone=False,
        source_ref=source_ref,
        created_at=utcnow(),
    )
    session.add(review)
    return review


def apply_decision(
    session: Session,
    item: Item,
    reviewer: Reviewer,
    action: ReviewAction,
    label: str | None,
    *,
    add_to_candidates: bool = False,
    source_ref: str | None = None,
) -> None:
    """The one write of a reviewer's tag, with its history row; the caller holds the dataset's lock (then the
    item's) and commits. ``accept`` takes the model's tag (409 when there is none yet); ``assign`` and ``audit``
    check ``label`` (:func:`_check_label`). ``source_ref`` names the outside decision it came from (see
    :func:`withdraw_source`)."""
    if action == "accept":
        if item.label is None:
            raise Conflict(f"item {item.id}: no tag to accept yet (no job has labelled it)", code="nothing_to_accept")
        label = item.label
    else:
        label = _check_label(item, label or "", add_to_candidates=add_to_candidates)
    previous = {"label": item.label, "label_source": item.label_source}
    _record(session, item, reviewer, action, label, source_ref)
    add_to_review_count(session, item.dataset_id, -int(bool(item.needs_review)))  # the item leaves the queue
    note_decision(session, item.dataset_id)  # a live refit that read the data before this one will not undo it
    if label not in item.candidates:
        item.candidates = [*item.candidates, label]
    item.label = label
    item.label_source = "reviewer"
    item.confidence = 1.0
    item.margin = 1.0
    item.needs_review = False
    item.model_id = None
    item.updated_at = utcnow()
    _emit_reviewed(session, item, previous, action, reviewer)


def _emit_reviewed(session: Session, item: Item, previous: dict, action: str, reviewer: Reviewer) -> None:
    """The owner's webhooks hear of a decision in its transaction (``app.services.webhooks``)."""
    data = {
        "item": item_read(item, get_settings()).model_dump(mode="json"),
        "previous": previous,
        "action": action,
        "reviewer": reviewer.name,
    }
    emit(session, owner_id=item.dataset.owner_id, event="item.reviewed", data=data)


def decide(
    *,
    session: Session,
    owner: Owner,
    item_ids: Sequence[str],
    action: ReviewAction,
    label: str | None,
    reviewer: Reviewer,
    add_to_candidates: bool = False,
) -> list[Item]:
    """A reviewer assigns ``label`` to (or accepts the model's tag of) each item, all or nothing, with history.

    404 if any id is missing or another owner's; 422 for a tag outside a dataset's classes (or outside an item's
    candidates without ``add_to_candidates``); 409 when accepting an item that has no tag yet."""
    if not item_ids:
        raise InvalidInput("items: no item selected", errors=[FieldError(field="items", message="items: empty")])
    unique = list(dict.fromkeys(item_ids))
    owned = select(Item.dataset_id).join(Dataset, Dataset.id == Item.dataset_id)
    dataset_ids = sorted(set(session.scalars(owned.where(Item.id.in_(unique), Dataset.owner_id == owner.id))))
    for dataset_id in dataset_ids:
        lock_dataset(session, dataset_id)  # the datasets first, then the items (app.services.datasets)
    items = list(
        session.scalars(
            select(Item)
            .join(Dataset, Dataset.id == Item.dataset_id)
            .where(Item.id.in_(unique), Dataset.owner_id == owner.id)
            .with_for_update(of=Item)
        )
    )
    found = {i.id: i for i in items}
    missing = [i for i in unique if i not in found]
    if missing:
        raise NotFound(f"item {shorten(missing[0])!r} not found")
    for item_id in unique:
        apply_decision(session, found[item_id], reviewer, action, label, add_to_candidates=add_to_candidates)
    session.commit()
    for dataset_id in dataset_ids:
        request_refit(session, dataset_id)  # the other items learn from it (app.services.refits)
    return [found[i] for i in unique]


def review_item(
    *, session: Session, owner: Owner, item_id: str, item_in: ItemUpdate, settings: Settings, reviewer: Reviewer
) -> ItemRead:
    """A reviewer sets the tag (see the module docstring for the rules)."""
    (item,) = decide(
        session=session,
        owner=owner,
        item_ids=[item_id],
        action="assign",
        label=item_in.label,
        reviewer=reviewer,
        add_to_candidates=item_in.add_to_candidates,
    )
    return item_read(item, settings)


#: History rows that are not decisions: an undo never undoes them.
NOT_DECISIONS = ("undo", "skip")


def _standing(session: Session, item: Item) -> list[ItemReview]:
    """The item's decisions that no undo has reverted, newest first."""
    return list(
        session.scalars(
            select(ItemReview)
            .where(ItemReview.item_id == item.id, ItemReview.action.not_in(NOT_DECISIONS), ItemReview.undone.is_(False))
            .order_by(ItemReview.id.desc())
        )
    )


def _restore(session: Session, item: Item, reviewer: Reviewer, undone: list[ItemReview]) -> None:
    """Revert ``undone`` (the item's newest standing decisions, newest first): the item goes back to what the oldest
    of them replaced, with one "undo" in the history; the caller holds the dataset's lock and commits."""
    first = undone[-1]
    previous = {"label": item.label, "label_source": item.label_source}
    _record(session, item, reviewer, "undo", first.previous_label)
    add_to_review_count(session, item.dataset_id, int(first.previous_needs_review) - int(bool(item.needs_review)))
    note_decision(session, item.dataset_id)
    for review in undone:
        review.undone = True
    item.label = first.previous_label
    item.label_source = first.previous_source
    item.confidence = first.previous_confidence
    item.margin = first.previous_margin
    item.needs_review = first.previous_needs_review
    item.model_id = first.previous_model_id
    item.candidates = list(first.previous_candidates)
    item.updated_at = utcnow()
    _emit_reviewed(session, item, previous, "undo", reviewer)


def lock_item(session: Session, item: Item) -> None:
    """Lock ``item`` for a decision, as every decision does: its dataset's row first, then its own (re-read)."""
    lock_dataset(session, item.dataset_id)
    session.refresh(item, with_for_update=True)


def record_skip(*, session: Session, owner: Owner, item_id: str, reviewer: Reviewer) -> None:
    """A reviewer looked at the item and moved on: a "skip" row in its history (the item is unchanged; an undo
    never undoes a skip)."""
    item = get_owned(session, Item, item_id, owner=owner, what="item")
    _record(session, item, reviewer, "skip", item.label)
    session.commit()


def undo_last(*, session: Session, owner: Owner, item_id: str, reviewer: Reviewer) -> Item:
    """Undo the item's latest decision that is not undone yet: restore what it replaced; 409 if there is none."""
    item = get_owned(session, Item, item_id, owner=owner, what="item")
    lock_item(session, item)
    standing = _standing(session, item)
    if not standing:
        raise Conflict(f"item {item.id}: no decision to undo", code="nothing_to_undo")
    _restore(session, item, reviewer, standing[:1])
    session.commit()
    request_refit(session, item.dataset_id)
    return item


def withdraw_source(*, session: Session, dataset_id: str, source_ref: str, reviewer: Reviewer) -> dict[str, bool]:
    """An outside decision was withdrawn (a Label Studio annotation deleted): undo what it set on the dataset's items.

    Per item where ``source_ref`` made a standing decision: when the item's newest standing decisions all came from
    it (the annotation, then its updates), the item goes back to what the first of them replaced; a decision made
    since by anyone else stands. {item id: undone}; the caller commits."""
    lock_dataset(session, dataset_id)
    item_ids = session.scalars(
        select(ItemReview.item_id)
        .join(Item, Item.id == ItemReview.item_id)
        .where(
            Item.dataset_id == dataset_id,
            ItemReview.source_ref == source_ref,
            ItemReview.action != "undo",
            ItemReview.undone.is_(False),
        )
        .distinct()
    ).all()
    outcome: dict[str, bool] = {}
    for item_id in sorted(item_ids):  # one lock order for concurrent withdrawals
        item = session.scalar(select(Item).where(Item.id == item_id).with_for_update())
        run = list(itertools.takewhile(lambda r: r.source_ref == source_ref, _standing(session, item)))
        if run:
            _restore(session, item, reviewer, run)
        outcome[item_id] = bool(run)
    return outcome


def item_history(*, session: Session, owner: Owner, item_id: str) -> list[ItemReview]:
    """The item's decisions, newest first."""
    item = get_item(session=session, owner=owner, item_id=item_id)
    return list(session.scalars(select(ItemReview).where(ItemReview.item_id == item.id).order_by(ItemReview.id.desc())))
