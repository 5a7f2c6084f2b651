"""Datasets and item uploads: rules, queries and the transaction boundary (routes never commit)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.checks import control_char_problem
from app.config import Settings
from app.errors import Conflict, FieldError, FieldErrors, InvalidInput
from app.models import Dataset, Item, Job, Owner, utcnow
from app.schemas import (
    DatasetCreate,
    DatasetCreated,
    DatasetDetail,
    DatasetList,
    DatasetRead,
    DuplicateRead,
    ItemsAdded,
    template_problem,
)
from app.services import job_states
from app.services.lookup import get_owned
from app.services.pages import keyset_page
from app.services.upload_names import dataset_name, refuse_taken_names
from app.storage import BlobStore, StorageError
from app.uploads import RawUpload, ValidBatch, check_classes, parse_upload
from vocab import JobStatus

log = logging.getLogger(__name__)

_IN_CHUNK = 1000


def get_dataset(*, session: Session, owner: Owner, dataset_id: str, lock: bool = False) -> Dataset:
    """The owner's dataset; 404 for a missing id and for another owner's (ids are not disclosed)."""
    return get_owned(session, Dataset, dataset_id, owner=owner, what="dataset", lock=lock)


def lock_dataset(session: Session, dataset_id: str) -> None:
    """Take the dataset row's lock (PostgreSQL; SQLite serialises its writers anyway). Every write that changes the
    dataset's items counts or review flags takes it first, before any item row: its counts stay exact and the
    locks are always taken in one order (dataset, then items)."""
    session.execute(select(Dataset.id).where(Dataset.id == dataset_id).with_for_update())


def refresh_review_count(session: Session, dataset_id: str) -> None:
    """Count the dataset's items needing review into ``review_count`` (after a bulk write of review flags, a job's);
    the caller holds the dataset's lock (:func:`lock_dataset`) and commits."""
    n = session.scalar(
        select(func.count()).select_from(Item).where(Item.dataset_id == dataset_id, Item.needs_review.is_(True))
    )
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(review_count=n or 0))


def add_to_review_count(session: Session, dataset_id: str, delta: int) -> None:
    """``review_count += delta`` (one item's review flag changed); the caller holds the dataset's lock."""
    if delta:
        session.execute(
            update(Dataset).where(Dataset.id == dataset_id).values(review_count=Dataset.review_count + delta)
        )


def _read(dataset: Dataset) -> DatasetRead:
    return DatasetRead(
        id=dataset.id,
        name=dataset.name,
        classes=dataset.classes,
        prompt_template=dataset.prompt_template,
        item_count=dataset.item_count or 0,
        created_at=dataset.created_at,
    )


def create_empty_dataset(
    *, session: Session, owner: Owner, dataset_in: DatasetCreate, settings: Settings
) -> DatasetRead:
    """``POST /datasets`` with JSON: a dataset with classes and no items."""
    errors = FieldErrors()
    name = dataset_name(dataset_in.name, errors)
    if not name:
        errors.append(_name_error())
    for field, value in (("name", dataset_in.name), ("prompt_template", dataset_in.prompt_template or "")):
        problem = control_char_problem(value)
        if problem:
            errors.append(_field(field, f"{field}: {problem}"))
    ambiguous: list[FieldError] = []
    classes = check_classes(dataset_in.classes, settings=settings, errors=errors, ambiguous=ambiguous)
    if errors:  # only names that look alike: content no JSON Schema can describe (docs/api.md, "Names")
        code = "ambiguous_names" if len(ambiguous) == len(errors) else None
        raise InvalidInput("; ".join(e.message for e in errors), errors=errors, code=code)
    if len(classes) > settings.max_classes:
        raise InvalidInput(f"classes: {len(classes)} classes, over the limit of {settings.max_classes}")
    dataset = Dataset(owner_id=owner.id, name=name, classes=classes, prompt_template=dataset_in.prompt_template)
    session.add(dataset)
    session.commit()
    return _read(dataset)


def create_dataset_from_upload(
    *,
    session: Session,
    storage: BlobStore,
    owner: Owner,
    raw: RawUpload,
    settings: Settings,
    remember: Callable[[str, BaseModel], None] | None = None,
) -> DatasetCreated:
    """``POST /datasets`` with multipart: validate the whole batch first, then store it in one transaction.
    ``remember(dataset_id, answer)`` is called in that transaction, before its commit (an Idempotency-Key)."""
    # Problems with the form fields are listed together with the batch's (one answer names every problem).
    field_errors: list[FieldError] = []
    name = dataset_name(raw.name or "", field_errors)
    if not name or len(name) > 200:
        field_errors.insert(0, _name_error())
    prompt = (raw.prompt_template or "").strip() or None
    template_error = template_problem(prompt) if prompt is not None else None
    if template_error:
        field_errors.append(_field("prompt_template", f"prompt_template: {template_error}"))
    for field, value in (("name", raw.name or ""), ("prompt_template", raw.prompt_template or "")):
        problem = control_char_problem(value)  # in the value as sent: a newline at the end is refused, not trimmed
        if problem:
            field_errors.append(_field(field, f"{field}: {problem}"))
    try:
        batch = parse_upload(raw, settings=settings, dataset_classes=None, require_items=False)
    except InvalidInput as exc:
        exc.errors[:0] = field_errors
        exc.detail = "; ".join([*(e.message for e in field_errors), exc.detail])
        raise
    if field_errors:
        raise InvalidInput("; ".join(e.message for e in field_errors), errors=field_errors)
    if not batch.classes:
        raise InvalidInput(
            "classes: a dataset needs classes (give `classes` or a manifest with candidates)",
            errors=[_field("classes", "classes: a dataset needs classes (give `classes` or a manifest)")],
        )
    dataset = Dataset(owner_id=owner.id, name=name, classes=batch.classes, prompt_template=prompt)
    session.add(dataset)
    session.flush()

    def answer(added: list[str], duplicates: list[DuplicateRead]) -> DatasetCreated:
        read = _read(dataset)
        return DatasetCreated(**read.model_dump(), added=len(added), duplicates=duplicates, skipped=batch.skipped)

    added, duplicates = _store_items(
        session=session, storage=storage, dataset=dataset, batch=batch, remember=_hook(remember, dataset.id, answer)
    )
    return answer(added, duplicates)


def _hook(remember, dataset_id: str, answer: Callable[[list[str], list[DuplicateRead]], BaseModel]):
    """``_store_items``'s ``before_commit``: the answer handed to ``remember`` (None without one)."""
    if remember is None:
        return None
    return lambda added, duplicates: remember(dataset_id, answer(added, duplicates))


def _name_error() -> FieldError:
    return _field("name", "name: required, 1 to 200 characters")


def _field(field: str, message: str) -> FieldError:
    return FieldError(field=field, message=message)


def add_items(
    *,
    session: Session,
    storage: BlobStore,
    owner: Owner,
    dataset_id: str,
    raw: RawUpload,
    settings: Settings,
    remember: Callable[[str, BaseModel], None] | None = None,
) -> ItemsAdded:
    """``POST /datasets/{id}/items``: all-or-nothing; duplicates of stored images are reported, not stored.
    ``remember`` as in :func:`create_dataset_from_upload`."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    if raw.name is not None:
        raw.errors.append(_field("name", "name: not accepted when adding items (the dataset has its name)"))
    batch = parse_upload(raw, settings=settings, dataset_classes=list(dataset.classes), require_items=True)
    # Serialise uploads to one dataset (sequence numbers, duplicate check) on PostgreSQL; SQLite writes are serial.
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id, lock=True)
    refuse_taken_names(session, dataset, batch)
    if batch.classes != list(dataset.classes):
        dataset.classes = batch.classes

    def answer(added: list[str], duplicates: list[DuplicateRead]) -> ItemsAdded:
        return ItemsAdded(
            dataset_id=dataset.id,
            added=len(added),
            item_ids=added,
            duplicates=duplicates,
            item_count=dataset.item_count,
            skipped=batch.skipped,
        )

    added, duplicates = _store_items(
        session=session, storage=storage, dataset=dataset, batch=batch, remember=_hook(remember, dataset.id, answer)
    )
    return answer(added, duplicates)


def _store_items(
    *,
    session: Session,
    storage: BlobStore,
    dataset: Dataset,
    batch: ValidBatch,
    remember: Callable[[list[str], list[DuplicateRead]], None] | None = None,
) -> tuple[list[str], list[DuplicateRead]]:
    """Insert the batch's new images (blobs first, then rows, one commit); returns (new item ids, duplicates).
    ``remember(new item ids, duplicates)`` runs after the rows are flushed, in the same transaction."""
    duplicates = [DuplicateRead(file=d.file, sha256=d.sha256, duplicate_of=d.duplicate_of) for d in batch.duplicates]
    shas = [it.sha256 for it in batch.items]
    existing: dict[str, str] = {}
    for i in range(0, len(shas), _IN_CHUNK):
        rows = session.execute(
            select(Item.sha256, Item.id).where(Item.dataset_id == dataset.id, Item.sha256.in_(shas[i : i + _IN_CHUNK]))
        )
        existing.update({sha: item_id for sha, item_id in rows})
    seq = session.scalar(select(func.max(Item.seq)).where(Item.dataset_id == dataset.id)) or 0
    new_items: list[Item] = []
    # blobs first (in parallel for an object store); a store failure raises before any row is added
    storage.put_many([it.data for it in batch.items if it.sha256 not in existing])
    for it in batch.items:
        if it.sha256 in existing:
            duplicates.append(DuplicateRead(file=it.file, sha256=it.sha256, duplicate_of=existing[it.sha256]))
            continue
        seq += 1
        new_items.append(
            Item(
                dataset_id=dataset.id,
                seq=seq,
                file=it.file[:500],
                sha256=it.sha256,
                width=it.width,
                height=it.height,
                candidates=it.candidates,
                given_label=it.label,
            )
        )
    session.add_all(new_items)
    # in SQL (the row is locked, or new): the value this session loaded before taking the lock may be stale
    dataset.item_count = Dataset.item_count + len(new_items)
    dataset.updated_at = utcnow()
    try:
        if remember is not None:
            session.flush()  # item ids, and the dataset's item_count read back
            remember([item.id for item in new_items], duplicates)
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("a concurrent upload stored some of these images first; retry the request") from None
    # A concurrent dataset delete may have collected a blob we share between put() and commit: put it back. The
    # rows are committed and every blob was stored above, so a store that fails now must not turn the answer into
    # "nothing was stored, retry" (the retry would store the dataset twice): the repair is skipped and logged.
    try:
        gone = storage.missing(it.sha256 for it in batch.items if it.sha256 not in existing)
        storage.put_many([it.data for it in batch.items if it.sha256 in gone])
    except StorageError as exc:
        log.warning(
            "dataset %s: %d items committed; the object store failed while re-checking their blobs (%s)",
            dataset.id,
            len(new_items),
            exc,
        )
    return [item.id for item in new_items], duplicates


def list_datasets(*, session: Session, owner: Owner, cursor: str | None, limit: int) -> DatasetList:
    """A page of the owner's datasets, oldest first (``app.services.pages``), with their item counts."""
    stmt = select(Dataset).where(Dataset.owner_id == owner.id)
    page = keyset_page(session, stmt, Dataset, cursor=cursor, limit=limit)
    return DatasetList(data=[_read(d) for d in page.rows], next_cursor=page.next_cursor, total=page.total)


def dataset_detail(*, session: Session, owner: Owner, dataset_id: str) -> DatasetDetail:
    """The dataset with its counts: per-class candidates and labels, labelled, reviewed, needing review."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    class_counts: Counter[str] = Counter({c: 0 for c in dataset.classes})
    label_counts: Counter[str] = Counter({c: 0 for c in dataset.classes})
    labelled = reviewed = review = 0
    rows = session.execute(
        select(Item.candidates, Item.label, Item.label_source, Item.needs_review).where(Item.dataset_id == dataset.id)
    )
    for candidates, label, source, needs_review in rows:
        class_counts.update(candidates)
        if label is not None:
            labelled += 1
            label_counts[label] += 1
        reviewed += source == "reviewer"
        review += bool(needs_review)
    read = _read(dataset)
    return DatasetDetail(
        **read.model_dump(),
        labelled_count=labelled,
        reviewed_count=reviewed,
        needs_review_count=review,
        class_counts=dict(class_counts),
        label_counts=dict(label_counts),
        updated_at=dataset.updated_at,
    )


def delete_dataset(*, session: Session, storage: BlobStore, owner: Owner, dataset_id: str) -> None:
    """Delete the dataset and its items; its queued jobs are cancelled and running ones asked to stop.

    Models trained on it stay (their ``dataset_id`` becomes null). Image blobs no other item references
    are removed after the commit.
    """
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id, lock=True)
    shas = set(session.scalars(select(Item.sha256).where(Item.dataset_id == dataset.id)))
    now = utcnow()
    unfinished = session.scalars(
        select(Job.id).where(Job.dataset_id == dataset.id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    ).all()
    for job_id in unfinished:  # the API's cancel: queued ones end now, running ones are asked to stop
        job_states.cancel(session, job_id, now=now, message="the dataset was deleted", reason="the dataset was deleted")
    session.execute(delete(Item).where(Item.dataset_id == dataset.id))
    session.delete(dataset)
    session.commit()
    _collect_blobs(session=session, storage=storage, shas=shas)


def _collect_blobs(*, session: Session, storage: BlobStore, shas: set[str]) -> None:
    """Delete the blobs of ``shas`` that no item references any more (best effort)."""
    remaining = list(shas)
    for i in range(0, len(remaining), _IN_CHUNK):
        chunk = remaining[i : i + _IN_CHUNK]
        used = set(session.scalars(select(Item.sha256).where(Item.sha256.in_(chunk)).distinct()))
        for sha in chunk:
            if sha not in used:
                try:
                    storage.delete(sha)
                except OSError as exc:  # pragma: no cover - disk trouble must not fail the delete
                    log.warning("could not delete blob %s: %s", sha, exc)
    session.rollback()
