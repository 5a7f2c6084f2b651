"""Audits: a random sample of a dataset's items, stratified by their tag and seeded, that a person answers blind.

An audit is the yardstick of the quality estimate (docs/quality.md): reviewers fix the doubtful items, so their
decisions are not a random sample; an audit is. :func:`start_audit` draws the sample (default: 50 items or 5% of
the dataset, whichever is larger, at most 300; never more than the dataset holds) by proportional allocation over
the strata (the items' tags when drawn; untagged items are one stratum), each stratum sampled with the seed, and the
whole sample shuffled with it, so the same seed on the same items draws the same sample in the same order. The
latest audit of a dataset is its current one.

An answer is a review decision with action ``"audit"`` (:func:`answer`, through :func:`app.services.reviews.decide`,
so counts, history, locks, undo and webhooks stay those of every decision): the item gets the person's tag as a
reviewer tag (any class of the dataset; a class outside its candidates is added to them). :func:`audited_tags` is
what the quality estimate and the worker read: the standing (not undone) audit answers on the current sample.
"""

from __future__ import annotations

import math
import random
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import Conflict, FieldError, InvalidInput
from app.models import Audit, AuditItem, Item, ItemReview, Owner, utcnow
from app.services.datasets import get_dataset, lock_dataset
from app.services.reviews import Reviewer, decide

#: The default sample: this many items or :data:`DEFAULT_SHARE` of the dataset, whichever is larger ...
DEFAULT_MIN = 50
DEFAULT_SHARE = 0.05
#: ... and never more than this (also the largest size a request may ask for).
MAX_SIZE = 300
MAX_SEED = 2**32 - 1
#: Unanswered items listed as "next" by :func:`progress`.
NEXT_ITEMS = 10


def default_size(population: int) -> int:
    """50 items or 5% of ``population``, whichever is larger, at most 300 and at most ``population``."""
    return min(population, MAX_SIZE, max(DEFAULT_MIN, math.ceil(DEFAULT_SHARE * population)))


def allocate(strata: dict[str | None, int], size: int) -> dict[str | None, int]:
    """Proportional allocation of ``size`` draws over ``strata`` ({stratum: items}), largest remainders first (ties
    by the stratum's name, so the allocation depends on nothing but the counts)."""
    total = sum(strata.values())
    if size >= total:
        return dict(strata)
    exact = {s: size * n / total for s, n in strata.items()}
    out = {s: math.floor(x) for s, x in exact.items()}
    order = sorted(strata, key=lambda s: (-(exact[s] - out[s]), s or ""))
    for s in order[: size - sum(out.values())]:
        out[s] += 1
    return out


def draw(items: list[tuple[str, str | None]], size: int, seed: int) -> list[tuple[str, str | None]]:
    """A stratified random sample of ``items`` ((id, stratum) in upload order): :func:`allocate`, then each stratum
    sampled (strata in name order) and the whole sample shuffled, all with one ``random.Random(seed)``."""
    rng = random.Random(seed)
    by_stratum: dict[str | None, list[str]] = {}
    for item_id, stratum in items:
        by_stratum.setdefault(stratum, []).append(item_id)
    counts = allocate({s: len(ids) for s, ids in by_stratum.items()}, size)
    sample = []
    for stratum in sorted(by_stratum, key=lambda s: (s is not None, s or "")):
        sample += [(i, stratum) for i in rng.sample(by_stratum[stratum], counts[stratum])]
    rng.shuffle(sample)
    return sample


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of ``k`` successes in ``n`` trials."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _bad(field_name: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[FieldError(field=field_name, message=message)])


def start_audit(
    *, session: Session, owner: Owner, dataset_id: str, size: int | None, seed: int | None, reviewer: Reviewer
) -> Audit:
    """Draw a new audit sample of the dataset (it becomes the current one); 422 naming ``size`` or ``seed`` when
    out of range, 409 when the dataset has no item."""
    if size is not None and not 1 <= size <= MAX_SIZE:
        raise _bad("size", f"size: {size} is not from 1 to {MAX_SIZE} (the largest audit)")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise _bad("seed", f"seed: {seed} is not from 0 to {MAX_SEED}")
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    lock_dataset(session, dataset.id)  # one audit drawn at a time per dataset
    items = [
        (row.id, row.label)
        for row in session.execute(select(Item.id, Item.label).where(Item.dataset_id == dataset.id).order_by(Item.seq))
    ]
    if not items:
        raise Conflict(f"dataset {dataset.id}: no item to audit yet", code="nothing_to_audit")
    n = min(size, len(items)) if size is not None else default_size(len(items))
    seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
    audit = Audit(
        dataset_id=dataset.id, seed=seed, size=n, population=len(items), reviewer=reviewer.name, created_at=utcnow()
    )
    session.add(audit)
    session.flush()
    for position, (item_id, stratum) in enumerate(draw(items, n, seed)):
        session.add(AuditItem(audit_id=audit.id, item_id=item_id, position=position, stratum=stratum))
    session.commit()
    return audit


def current_audit(session: Session, dataset_id: str) -> Audit | None:
    """The dataset's latest audit, or None."""
    return session.scalar(
        select(Audit).where(Audit.dataset_id == dataset_id).order_by(Audit.created_at.desc(), Audit.id.desc()).limit(1)
    )


def _answers(session: Session, audit_id: str) -> dict[str, str]:
    """{item id: tag}: the standing audit answers on the audit's items, the latest per item."""
    rows = session.execute(
        select(ItemReview.item_id, ItemReview.label)
        .join(AuditItem, AuditItem.item_id == ItemReview.item_id)
        .where(AuditItem.audit_id == audit_id, ItemReview.action == "audit", ItemReview.undone.is_(False))
        .order_by(ItemReview.id)
    )
    return {item_id: label for item_id, label in rows}


def audited_tags(session: Session, dataset_id: str) -> dict[str, str]:
    """{item id: true tag} for the dataset's current audit sample: its answered items, the latest standing answer
    per item (undone answers and every other kind of decision left out); empty without an audit."""
    audit = current_audit(session, dataset_id)
    return _answers(session, audit.id) if audit else {}


@dataclass
class AuditProgress:
    """The current audit: how far it is, its strata, and the next items to ask (without any model output)."""

    audit: Audit
    answered: int
    total: int
    strata: list[dict] = field(default_factory=list)  # {"tag", "items", "answered"}, largest first
    next_items: list[Item] = field(default_factory=list)
    agreed: int = 0  # answers equal to the item's tag when drawn

    @property
    def agreement(self) -> tuple[float, float, float] | None:
        """The share of answers equal to the tag the item had when drawn, with its 95% Wilson interval: how right
        the tags were, measured on this random sample (None before the first answer)."""
        if not self.answered:
            return None
        return (self.agreed / self.answered, *wilson(self.agreed, self.answered))

    @property
    def created_at(self) -> datetime:
        return self.audit.created_at


def progress(*, session: Session, owner: Owner, dataset_id: str, limit: int = NEXT_ITEMS) -> AuditProgress | None:
    """The dataset's current audit with its progress and up to ``limit`` unanswered items in the order they are
    asked; None when the dataset has no audit (404 for another owner's dataset)."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    audit = current_audit(session, dataset.id)
    if audit is None:
        return None
    answers = _answers(session, audit.id)
    members = session.execute(
        select(AuditItem.item_id, AuditItem.stratum).where(AuditItem.audit_id == audit.id).order_by(AuditItem.position)
    ).all()
    strata: dict[str | None, list[int]] = {}
    for item_id, stratum in members:
        counts = strata.setdefault(stratum, [0, 0])
        counts[0] += 1
        counts[1] += item_id in answers
    waiting = [item_id for item_id, _ in members if item_id not in answers][:limit]
    found = {i.id: i for i in session.scalars(select(Item).where(Item.id.in_(waiting)))} if waiting else {}
    return AuditProgress(
        audit=audit,
        answered=len(answers),
        total=len(members),
        agreed=sum(answers[item_id] == stratum for item_id, stratum in members if item_id in answers),
        strata=[
            {"tag": s, "items": n, "answered": a}
            for s, (n, a) in sorted(strata.items(), key=lambda kv: (-kv[1][0], kv[0] or ""))
        ],
        next_items=[found[i] for i in waiting if i in found],
    )


def answer(
    *, session: Session, owner: Owner, dataset_id: str, item_id: str, label: str, reviewer: Reviewer
) -> AuditProgress:
    """Record a person's true tag of an item of the current audit (an ``"audit"`` decision); 409 without an audit,
    422 naming ``item_id`` for an item outside the sample and ``label`` for a tag outside the dataset's classes."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    audit = current_audit(session, dataset.id)
    if audit is None:
        raise Conflict(f"dataset {dataset.id}: no audit started", code="no_audit")
    member = session.scalar(
        select(func.count()).select_from(AuditItem).where(AuditItem.audit_id == audit.id, AuditItem.item_id == item_id)
    )
    if not member:
        message = f"item_id: item {item_id[:64]!r} is not in the dataset's current audit"
        raise InvalidInput(message, errors=[FieldError(field="item_id", item=item_id[:64], message=message)])
    decide(
        session=session,
        owner=owner,
        item_ids=[item_id],
        action="audit",
        label=label,
        reviewer=reviewer,
        add_to_candidates=True,  # the true tag may lie outside the weak candidate set
    )
    out = progress(session=session, owner=owner, dataset_id=dataset.id)
    assert out is not None
    return out
