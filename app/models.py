"""SQLAlchemy ORM models: the database schema (Alembic reads ``Base.metadata``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    literal_column,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.config import MAX_TAG_COLUMN
from vocab import JobStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: The sort key of an item without a score (margin or confidence null): after every real score (they lie in [0, 1]).
#: A literal in the SQL, never a bound parameter: the order indexes below are on this exact expression, and a
#: database uses an expression index only for a query that spells the expression the same way.
NO_SCORE = literal_column("2.0")


def score_key(column):
    """``coalesce(column, 2.0)``: the sort key of the margin and confidence orders (unscored items last)."""
    return func.coalesce(column, NO_SCORE)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite stores no zone: read values are tagged UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


class Owner(Base):
    """A tenant: datasets, items, jobs and models belong to one owner."""

    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="owner", cascade="all, delete-orphan")


class ApiKey(Base):
    """A bearer key, stored as its SHA-256 only; ``prefix`` lets an owner tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(200), default=None)  # the person holding it (review history)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    owner: Mapped[Owner] = relationship(back_populates="api_keys")


class Dataset(Base):
    """A set of images, each with a candidate set of tags drawn from ``classes``."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_created", "owner_id", "created_at", "id"),)  # list pages

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    classes: Mapped[list[str]] = mapped_column(JSON)
    prompt_template: Mapped[str | None] = mapped_column(Text, default=None)
    # The totals of the item lists, kept with the rows so that a page costs the same at any size (no count(*)):
    # items stored, and of them the ones needing review. Every writer holds this row's lock while it changes them
    # (app.services.datasets: lock_dataset, refresh_review_count; app.services.reviews; worker.job_rows).
    item_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    review_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # +1 in the transaction of every decision, undo or outside decision (app.services.reviews): a live refit reads
    # it with the data and saves only while no decision came since (app.services.refits)
    decision_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    quality: Mapped[dict | None] = mapped_column(JSON, default=None)  # the latest quality report (job or refit)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    items: Mapped[list[Item]] = relationship(
        back_populates="dataset", cascade="all, delete-orphan", passive_deletes=True
    )


class Item(Base):
    """One image of a dataset: its candidate tags and, once a job or a reviewer decided, its tag."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("dataset_id", "sha256"),
        Index("ix_items_dataset_seq", "dataset_id", "seq"),  # list pages in upload order
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # dataset_id, seq and needs_review have no index of their own: every query on them names the dataset, and
    # ix_items_dataset_seq or a review index (dataset_id first) serves it, the cascade delete from datasets included
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)  # upload order within the dataset (cursor key)
    file: Mapped[str] = mapped_column(String(500))  # the uploaded file name, for display only, never a path
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # content address of the image blob
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    candidates: Mapped[list[str]] = mapped_column(JSON)
    given_label: Mapped[str | None] = mapped_column(
        String(MAX_TAG_COLUMN), default=None
    )  # "label" of the manifest line
    label: Mapped[str | None] = mapped_column(String(MAX_TAG_COLUMN), default=None)
    confidence: Mapped[float | None] = mapped_column(Float, default=None)
    margin: Mapped[float | None] = mapped_column(Float, default=None)
    label_source: Mapped[str | None] = mapped_column(String(16), default=None)  # "model" | "reviewer"
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)  # in the review indexes, after dataset_id
    model_id: Mapped[str | None] = mapped_column(String(32), default=None)  # model that set ``label``
    probs: Mapped[dict | None] = mapped_column(JSON, default=None)  # candidate -> the model's probability
    refit_revision: Mapped[int | None] = mapped_column(BigInteger, default=None)  # the refit that last changed label
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    dataset: Mapped[Dataset] = relationship(back_populates="items")


# Keyset pages in score order (``app.services.items``, ``app.services.review_queue``): an index range scan from the
# cursor on, in index order, at any depth (no sort of the dataset); the review queue filters on needs_review first.
Index("ix_items_margin_order", Item.dataset_id, score_key(Item.margin), Item.seq)
Index("ix_items_review_margin", Item.dataset_id, Item.needs_review, score_key(Item.margin), Item.seq)
Index("ix_items_review_confidence", Item.dataset_id, Item.needs_review, score_key(Item.confidence), Item.seq)


class ItemReview(Base):
    """One reviewer decision on an item, with what it replaced, so that it can be shown and undone."""

    __tablename__ = "item_reviews"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    api_key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"), default=None)
    reviewer: Mapped[str] = mapped_column(String(200))  # the key's name (or its prefix when it has none)
    action: Mapped[str] = mapped_column(String(16))  # "assign" | "accept" | "audit" | "undo" | "skip"
    label: Mapped[str | None] = mapped_column(String(MAX_TAG_COLUMN))  # the tag after the decision
    previous_label: Mapped[str | None] = mapped_column(String(MAX_TAG_COLUMN), default=None)
    previous_source: Mapped[str | None] = mapped_column(String(16), default=None)
    previous_confidence: Mapped[float | None] = mapped_column(Float, default=None)
    previous_margin: Mapped[float | None] = mapped_column(Float, default=None)
    previous_needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    previous_model_id: Mapped[str | None] = mapped_column(String(32), default=None)  # model that proposed it
    previous_candidates: Mapped[list[str]] = mapped_column(JSON)
    undone: Mapped[bool] = mapped_column(Boolean, default=False)  # a later "undo" restored the previous state
    # where a decision made outside tagsift came from, so that withdrawing it there undoes it here:
    # "label-studio:annotation:<id>" (app.services.label_studio)
    source_ref: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Audit(Base):
    """A random sample of a dataset's items, stratified by their tag when drawn, that a person answers blind (the
    model's tag hidden): the yardstick of the quality estimate (``app.services.audits``). The latest is current."""

    __tablename__ = "audits"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(Integer)  # items drawn
    population: Mapped[int] = mapped_column(Integer)  # the dataset's items when drawn
    reviewer: Mapped[str] = mapped_column(String(200))  # who started it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditItem(Base):
    """One item of an audit sample, in the order it is asked, with its tag when drawn (its stratum)."""

    __tablename__ = "audit_items"

    audit_id: Mapped[str] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer)
    stratum: Mapped[str | None] = mapped_column(String(MAX_TAG_COLUMN), default=None)  # None: untagged when drawn


class WebSession(Base):
    """A browser session of the web app: the cookie holds a random token, the table its SHA-256."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie's token
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Job(Base):
    """A tuning job. The database row is the source of truth; the broker message only names its id."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),  # list pages
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    type: Mapped[str] = mapped_column(String(32), default="train")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)  # vocab.JobStatus
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    progress: Mapped[dict] = mapped_column(JSON, default=dict)  # stage, epoch, epochs, fraction
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # runs started so far
    max_attempts: Mapped[int] = mapped_column(Integer, default=2)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)  # "<host>:<pid>:<uuid>" of the runner
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)  # X-Request-ID of the creating POST
    model_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    """Stage changes and per-epoch metrics of a job, in order (``id`` is the ``after`` cursor)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "stage" | "epoch" | "attempt" | "error"
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EncodeShard(Base):
    """A share of a job's images to encode, claimed by any free worker of the job's queue (``worker.shards``).

    Rows of one attempt of a job: planned by the job's runner, claimed with a lease like a job (``lease_owner``,
    ``lease_expires_at`` on the database's clock), ``done`` once its features are in the store's feature cache.
    Deleted when the job ends (and with the job)."""

    __tablename__ = "encode_shards"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)  # the job's attempt that planned it
    seq: Mapped[int] = mapped_column(Integer)
    backbone_id: Mapped[str] = mapped_column(String(500))  # the feature cache key: only such a worker may encode it
    views: Mapped[int] = mapped_column(Integer)  # views 0..views-1 of each image
    seed: Mapped[int] = mapped_column(Integer)  # seed of the augmented views
    shas: Mapped[list[str]] = mapped_column(JSON)  # sha256 of each image, in the job's item order
    images: Mapped[int] = mapped_column(Integer)  # len(shas), for progress without reading the lists
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|running|done
    runs: Mapped[int] = mapped_column(Integer, default=0)  # claims so far (> 1: a worker was lost or gave it back)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)  # "<host>:<pid>:<uuid>"
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    encoded_by: Mapped[str | None] = mapped_column(String(200), default=None)  # the runner that finished it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Model(Base):
    """A trained classifier: class text features + backbone, exported as ONNX, stored content-addressed."""

    __tablename__ = "models"
    __table_args__ = (Index("ix_models_owner_created", "owner_id", "created_at", "id"),)  # list pages

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    # the job that trained it; None for a live refit's revision (app.services.refits: metrics["refit"] says of what)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    backbone: Mapped[str] = mapped_column(String(500))
    method: Mapped[str] = mapped_column(String(32))
    classes: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    artifacts: Mapped[dict] = mapped_column(JSON, default=dict)  # name -> sha256 of the stored blob
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    """An owner's webhook: a URL that gets the events it subscribed to, signed with its own secret."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str | None] = mapped_column(String(200), default=None)
    # the HMAC key, shown once when the hook is created; stored sealed with TAGSIFT_SECRET_KEYS (app.secretbox)
    secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook: the outbox row written in the transaction of the change, then the delivery log.

    ``id`` orders the log (the page cursor); ``delivery_id`` is what the receiver sees (header and body), the same on
    every retry. ``next_attempt_at`` is when a worker may (re)try it: a worker that takes it moves it past its
    timeout first, so a worker that dies mid-attempt leaves it due again later.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_id)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the exact bytes sent (UTF-8 JSON), the same on every attempt
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    log: Mapped[list[dict]] = mapped_column(JSON, default=list)  # one entry per attempt
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class UploadRequest(Base):
    """An upload sent with an ``Idempotency-Key`` (``POST /datasets``, ``POST /datasets/{id}/items``): the request's
    fingerprint and the answer, written in the upload's own transaction and replayed for the same key and request
    (``app.services.upload_keys``). Deleted with its dataset, so a key may be used again after that."""

    __tablename__ = "upload_requests"
    __table_args__ = (UniqueConstraint("owner_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Refit(Base):
    """A live refit of a dataset's latest model after review decisions (``app.services.refits``, ``worker.refit``).

    ``decision_seq`` is the dataset's decision sequence the refit read; it saves only while it is still the
    dataset's (a decision since makes it ``stale`` and one more refit runs). ``model_id`` is the model revision it
    stored (the one ``/predict`` and the export serve); ``base_model_id`` the model it started from."""

    __tablename__ = "refits"
    __table_args__ = (
        UniqueConstraint("dataset_id", "revision"),
        Index("ix_refits_dataset_status", "dataset_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per dataset
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|succeeded|failed|stale
    base_model_id: Mapped[str | None] = mapped_column(String(32), default=None)
    model_id: Mapped[str | None] = mapped_column(String(32), default=None)
    decision_seq: Mapped[int | None] = mapped_column(BigInteger, default=None)
    reviewed_items: Mapped[int | None] = mapped_column(Integer, default=None)
    audited_items: Mapped[int | None] = mapped_column(Integer, default=None)
    changed_items: Mapped[int | None] = mapped_column(Integer, default=None)
    seconds: Mapped[float | None] = mapped_column(Float, default=None)  # decision read -> every item retagged
    quality: Mapped[dict | None] = mapped_column(JSON, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)  # e.g. features_missing
    error: Mapped[str | None] = mapped_column(Text, default=None)  # what happened and what to do
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
