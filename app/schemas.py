"""Pydantic I/O schemas, one family per resource: ``XCreate`` / ``XUpdate`` (input), ``XRead`` / ``XList`` (output).

(Over 400 lines: every request and response shape of the API in one file, with the JSON-schema patterns they share,
is what the OpenAPI document, the fuzz test and tests/test_contracts.py read; split it by resource when it grows.)

:class:`JobCreate` holds the job parameters that do not depend on the method (batch 32, momentum 0.9, 16 context
tokens, seed 1, ...); ``method="auto"`` and the per-method loss, epochs and lr left null are resolved by
``app/job_defaults.py`` when the job is created. The stored job ``params`` are the resolved values: every value
explicit, so a job re-run later means the same thing even if these defaults change.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator

import vocab
from app.names import INVISIBLE_CLASS
from vocab import LOSSES, METHODS, PARAMS

#: A job's status, in the API's shapes (the names: ``vocab.JobStatus``).
JobStatus = Literal[vocab.JOB_STATUSES]

#: JSON schema of a prompt template (the validators below check the same): the class name goes where "{}" is,
#: exactly once (ml's rule, ``ml.prompts.validate_templates``; tests/test_contracts.py ties the two).
TEMPLATE_SCHEMA = {"type": "string", "pattern": r"^(?:(?!\{\})[\s\S])*\{\}(?:(?!\{\})[\s\S])*$", "maxLength": 500}
TEMPLATE_MAX_LENGTH = 500


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be a prompt template, or None: exactly one "{}" (the class name), <= 500 chars."""
    slots = template.count("{}")
    if slots != 1:
        found = "none" if slots == 0 else f"{slots}"
        return f'needs exactly one "{{}}" where the class name goes (found {found})'
    if len(template) > TEMPLATE_MAX_LENGTH:
        return f"at most {TEMPLATE_MAX_LENGTH} characters"
    return None


# What the services check on stored text, as JSON Schema patterns (ECMA-262 and Python read them alike: explicit
# classes, no \s): no control character (Cc) anywhere; in a tag or a name no invisible character (app.names); for
# a tag no whitespace at either end (exactly what Python's str.strip() removes, app.uploads.rules.tag_problem).
_CONTROL = r"\x00-\x1f\x7f-\x9f"
_SPACE = r"\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_NOT_IN_NAMES = _CONTROL + INVISIBLE_CLASS
#: A tag (class name): 1 to 200 characters (``TAGSIFT_MAX_TAG_LENGTH``'s default and largest value).
TAG_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": f"^[^{_NOT_IN_NAMES}{_SPACE}](?:[^{_NOT_IN_NAMES}]*[^{_NOT_IN_NAMES}{_SPACE}])?$",
}
#: An outside id (a Label Studio annotation's, as a string): 1 to 64 characters (``checks.plausible_id``), none a
#: control character.
OUTSIDE_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": f"^[^{_CONTROL}]+$"}
#: A name: no control or invisible characters, and something besides spaces.
NAME_PATTERN = f"^[^{_NOT_IN_NAMES}]*[^{_NOT_IN_NAMES}{_SPACE}][^{_NOT_IN_NAMES}]*$"
#: A dataset's prompt template: blank (none), or text with exactly one "{}" (ml's rule, as TEMPLATE_SCHEMA) and no
#: control characters.
DATASET_TEMPLATE_PATTERN = f"^(?:(?!\\{{\\}})[^{_CONTROL}])*\\{{\\}}(?:(?!\\{{\\}})[^{_CONTROL}])*$|^[{_SPACE}]*$"


def _integral(value: Any) -> Any:
    """JSON's 3.0 is the integer 3 (JSON Schema counts it as one): accepted for an integer field, 3.5 still not."""
    return int(value) if type(value) is float and value.is_integer() else value


#: An integer field of a request body: strict (no "3", no true), but 3.0 is 3, as the JSON Schema says. (An optional
#: one spells it out with its bounds before the validator, or the bounds leave the JSON Schema as "ge"/"le".)
JsonInt = Annotated[int, BeforeValidator(_integral)]


class _Input(BaseModel):
    """Request bodies: unknown fields and wrong JSON types are refused (strict: no "3" for 3, no 1 for true)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- datasets ---------------------------------------------------------------------------------------------


class DatasetCreate(_Input):
    """JSON body of ``POST /datasets`` for an empty dataset (images come later via ``POST /datasets/{id}/items``)."""

    name: Annotated[
        str, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 200, "pattern": NAME_PATTERN})
    ] = Field(min_length=1, max_length=200)
    classes: Annotated[
        list[Annotated[str, WithJsonSchema(TAG_SCHEMA)]],
        WithJsonSchema({"type": "array", "items": TAG_SCHEMA, "minItems": 1, "uniqueItems": True}),
    ] = Field(min_length=1, description="The tag vocabulary, distinct tags; item candidates must come from it.")
    prompt_template: (
        Annotated[str, WithJsonSchema({"type": "string", "maxLength": 500, "pattern": DATASET_TEMPLATE_PATTERN})] | None
    ) = Field(None, max_length=500, description='e.g. "a photo of a {}." (blank: none)')

    @field_validator("prompt_template")
    @classmethod
    def _template_has_slot(cls, value: str | None) -> str | None:
        problem = template_problem(value) if value is not None and value.strip() else None
        if problem:
            raise ValueError(f"the template {problem}")
        return value.strip() or None if value is not None else None


class DuplicateRead(BaseModel):
    """An uploaded image that was not stored because the same bytes (sha256) are already in the dataset/batch."""

    file: str
    sha256: str
    duplicate_of: str = Field(description="The item id (already stored) or file name (earlier in this batch).")


class DatasetRead(_Output):
    id: str
    name: str
    classes: list[str]
    prompt_template: str | None
    item_count: int
    created_at: datetime


class DatasetCreated(DatasetRead):
    """``POST /datasets``: the dataset, how many items the upload added, and the duplicates it skipped."""

    added: int
    duplicates: list[DuplicateRead]
    skipped: list[str] = Field(
        default_factory=list, description="Label Studio tasks left out: every annotation was cancelled (skipped)."
    )


class DatasetDetail(DatasetRead):
    """``GET /datasets/{id}``: the dataset with its counts."""

    labelled_count: int = Field(description="Items that have a tag (from a model or a reviewer).")
    reviewed_count: int = Field(description="Items whose tag a reviewer set.")
    needs_review_count: int
    class_counts: dict[str, int] = Field(description="Per class: items having it among their candidates.")
    label_counts: dict[str, int] = Field(description="Per class: items currently tagged with it.")
    updated_at: datetime


def _next_cursor() -> Any:
    """The keyset cursor that every list answer carries besides ``data``."""
    return Field(description="Pass as `cursor` for the next page; null on the last page.")


def _total() -> Any:
    """The count that every list answer carries: every row matching the filters, over all pages."""
    return Field(description="How many rows match the filters, over every page.")


class DatasetList(BaseModel):
    data: list[DatasetRead]
    next_cursor: str | None = _next_cursor()
    total: int = _total()


class ItemsAdded(BaseModel):
    """``POST /datasets/{id}/items``: what the batch stored and what it skipped as duplicates."""

    dataset_id: str
    added: int
    item_ids: list[str]
    duplicates: list[DuplicateRead]
    item_count: int
    skipped: list[str] = Field(
        default_factory=list, description="Label Studio tasks left out: every annotation was cancelled (skipped)."
    )


# --- items ------------------------------------------------------------------------------------------------


class ItemRead(_Output):
    id: str
    dataset_id: str
    file: str
    sha256: str
    width: int
    height: int
    candidates: list[str]
    given_label: str | None
    label: str | None
    confidence: float | None
    margin: float | None
    label_source: str | None = Field(description="`model` or `reviewer`; null until a job or a reviewer tags it.")
    needs_review: bool
    probs: dict[str, float] | None = Field(
        None, description="The model's probability of each candidate (over the candidates); null until a job ran."
    )
    image_url: str


class ItemList(BaseModel):
    data: list[ItemRead]
    next_cursor: str | None = _next_cursor()
    total: int = _total()


class ItemUpdate(_Input):
    """A reviewer's tag: one of the dataset's classes (see ``services.reviews.review_item``)."""

    label: str = Field(min_length=1, description="One of the dataset's classes, exactly (no surrounding whitespace).")
    add_to_candidates: bool = Field(
        False,
        description="Allow a tag outside the item's candidates and add it to them; without it such a tag is a 422.",
    )


# --- jobs -------------------------------------------------------------------------------------------------


#: Job params that place a job (which queue, which kind of worker) rather than shape training: neither a TrainConfig
#: field nor one of ml's run params (tests/test_contracts.py).
PLACEMENT_PARAMS = ("device",)


def _param(name: str, **kwargs: Any) -> Any:
    """The ``Field`` of job parameter ``name``: its default and bounds from ``vocab.PARAMS`` (an optional whole number
    has its bounds on the integer: :func:`_optional_int`)."""
    p = PARAMS[name]
    return Field(p.default, **({} if p.integer and p.default is None else p.bounds()), **kwargs)


def _optional_int(name: str) -> Any:
    """``int | None`` with ``name``'s bounds on the integer (on the union, the JSON Schema would lose them)."""
    return Annotated[int, Field(**PARAMS[name].bounds()), BeforeValidator(_integral)] | None


class JobCreate(_Input):
    """Training parameters; defaults are the benchmark's best validated configuration (``app/job_defaults.py``).
    Unknown fields and values answer 422 naming the field.

    ``shots``: at most that many training items per class (items chosen by the worker, seeded by ``seed``);
    null = every item. Reviewed items always count as certain (a single candidate: the reviewer's tag).
    """

    method: Literal[(vocab.AUTO_METHOD_NAME, *METHODS)] = Field(
        vocab.AUTO_METHOD_NAME, description="auto: the best measured method (app/job_defaults.py)."
    )
    loss: Literal[LOSSES] | None = Field(None, description="PLL loss; null: the best measured one for the method.")
    epochs: _optional_int("epochs") = _param("epochs", description="null: the measured default for the method.")
    batch_size: JsonInt = _param("batch_size")
    lr: float | None = _param("lr", description="SGD learning rate; null: the method's default.")
    momentum: float = _param("momentum")
    weight_decay: float = _param("weight_decay")
    n_ctx: JsonInt = _param("n_ctx")
    ctx_init: str = Field("", max_length=200, description='"" = random init; else an init phrase ("a photo of a").')
    class_token_position: Literal[vocab.CLASS_TOKEN_POSITIONS] = vocab.CLASS_TOKEN_POSITIONS[0]
    csc: bool = Field(False, description="Class-specific context.")
    mix: Literal[vocab.MIX_MODES] | None = Field(
        None,
        description="Alignment teacher: the handcrafted posterior ('none'), mixed with the learned one at mix_alpha"
        " ('constant'), ramped up to it ('ramp'), or at 1 - the prior's trust read from the candidate sets ('trust');"
        " null: the method's default.",
    )
    mix_alpha: float = _param("mix_alpha")
    prior_strength: float | None = _param(
        "prior_strength",
        description="aligned_head: weight decay of the head's residual = prior_strength / items; null: the default.",
    )
    graph_k: JsonInt = _param("graph_k", description="Neighbours per item in the feature graph (graph_weight).")
    graph_weight: float | None = _param(
        "graph_weight",
        description="Weight of the neighbours in RC's confidence updates (rc loss only); 0: no graph; null: default.",
    )
    templates: list[Annotated[str, WithJsonSchema(TEMPLATE_SCHEMA)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description='Handcrafted prompt(s) with "{}" for the class; null: the dataset\'s prompt_template.',
    )
    knn_vote: bool | None = Field(
        None,
        description="Prune training candidate sets by neighbour voting in image-feature space; null: method default.",
    )
    knn_k: JsonInt = _param("knn_k", description="Neighbours that vote (knn_vote).")
    knn_tau: float = _param("knn_tau", description="Keep candidates with at least tau x the best vote.")
    handcrafted_mix: float | None = _param(
        "handcrafted_mix", description="Weight of the handcrafted (zero-shot) classifier mixed in; null: default."
    )
    shots: _optional_int("shots") = _param("shots")
    views: _optional_int("views") = _param("views", description="Augmented views per image; null: the server default.")
    seed: JsonInt = _param("seed")
    precision: Literal[vocab.PRECISIONS] = vocab.PRECISIONS[0]
    device: Literal[vocab.DEVICES] | None = Field(
        None,
        description="Where the job runs: 'gpu' (only GPU workers take it), 'cpu' (only CPU workers), 'auto' (the first"
        " free worker of either kind); null: the server's TAGSIFT_JOB_DEVICE. docs/deploy.md, Queues and devices.",
    )

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, value: list[str] | None) -> list[str] | None:
        for i, t in enumerate(value or []):
            problem = template_problem(t)
            if problem:
                raise ValueError(f"template {i}: {problem}")
        return value


class ProgressRead(BaseModel):
    stage: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    fraction: float | None = None


class ErrorRead(BaseModel):
    code: str
    message: str | None


class JobRead(BaseModel):
    id: str
    type: str
    dataset_id: str | None
    status: JobStatus
    params: dict[str, Any]
    progress: ProgressRead
    metrics: dict[str, Any]
    quality: dict[str, Any] | None = Field(
        None,
        description="How good the job's labels are, without true labels (docs/results.md, 'Quality report'): "
        "estimated_accuracy in [0, 1], the held-out accuracy with its 95% interval, the calibration, per-epoch "
        "losses and label churn. Null until the job has succeeded.",
    )
    error: ErrorRead | None
    attempt: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    model_id: str | None


class JobList(BaseModel):
    data: list[JobRead]
    next_cursor: str | None = _next_cursor()
    total: int = _total()


class JobEventRead(_Output):
    id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


class JobEventList(BaseModel):
    data: list[JobEventRead]
    next_after: int | None = Field(description="Pass as `after` to read newer events (the last id returned).")
    has_more: bool = Field(description="Whether events after this page exist now (a running job adds more).")
    total: int = Field(description="How many events the job has, over every page (`after` does not change it).")


# --- models and predictions -------------------------------------------------------------------------------


class ModelRead(_Output):
    id: str
    job_id: str | None  # None: a live refit's revision of a job's model (metrics["refit"])
    dataset_id: str | None
    backbone: str
    method: str
    classes: list[str]
    metrics: dict[str, Any]
    artifacts: list[str]
    export_url: str
    created_at: datetime


class ModelList(BaseModel):
    data: list[ModelRead]
    next_cursor: str | None = _next_cursor()
    total: int = _total()


class ScoredLabel(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    file: str | None = None
    item_id: str | None = None
    label: str
    score: float
    top_k: list[ScoredLabel]
    restricted_to_candidates: bool


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[Prediction]


class ProblemFieldError(BaseModel):
    """One problem with the input (``app.errors.FieldError``)."""

    field: str = Field(description="The field: a form/JSON field, `manifest`, `images`, a query parameter, ...")
    message: str
    item: str | None = Field(None, description="The file name, row or index the problem is about.")
    line: int | None = Field(None, description="The manifest line (1-based).")


class Problem(BaseModel):
    """``application/problem+json`` (RFC 9457) with ``code`` and, for input errors, ``errors``.

    Some problems carry extra members (e.g. the ids involved); clients should ignore members they do not know.
    """

    type: str = Field(description="`urn:tagsift:problem:<code>`.")
    title: str = Field(description="The HTTP status phrase.")
    status: int
    detail: str = Field(description="What went wrong, for a person.")
    code: str = Field(description="Stable machine-readable code, e.g. `not_found`, `invalid_input`.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemFieldError] | None = Field(None, description="Every bad field / item (input errors).")


# --- webhooks (docs/integrations.md) ----------------------------------------------------------------------

WEBHOOK_EVENTS = (*vocab.STATUS_EVENTS.values(), "item.reviewed", "labels.updated")  # job statuses, a review, a refit
WebhookEvent = Literal[WEBHOOK_EVENTS]


class WebhookCreate(_Input):
    """``POST /webhooks``: where to send which events. The URL's host must be allowed by the service's settings and
    resolve only to public addresses."""

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="http(s) URL that receives a POST per event; its host must be allowed"
        " (TAGSIFT_WEBHOOK_ALLOWED_HOSTS) and resolve only to public addresses (or TAGSIFT_WEBHOOK_ALLOWED_NETWORKS).",
        json_schema_extra={"format": "uri", "pattern": r"^https?://[^\s#@/]+(/[^\s#]*)?$"},
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS),
        min_length=1,
        description="The events to send (default: all of them).",
    )
    description: str | None = Field(None, max_length=200)


class WebhookRead(_Output):
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime


class WebhookCreated(WebhookRead):
    """The new hook with its signing secret, shown this once (delete the hook and register it again to change it)."""

    secret: str = Field(description="The HMAC-SHA256 key of the `Tagsift-Signature` header.")


class WebhookList(BaseModel):
    data: list[WebhookRead]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
    total: int = Field(description="The owner's webhooks.")


class WebhookAttemptRead(BaseModel):
    attempt: int
    at: datetime | None = Field(description="When it started; null for an attempt whose worker stopped during it.")
    status_code: int | None = Field(description="The receiver's HTTP status; null when no response came.")
    error: str | None = Field(description="Why the attempt failed; null for a 2xx.")
    duration_ms: int


class WebhookDeliveryRead(BaseModel):
    id: str = Field(description="The delivery id (`Tagsift-Delivery` header and `id` of the body).")
    event: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None = Field(description="When the next attempt is due (pending deliveries).")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    finished_at: datetime | None
    payload: dict[str, Any] = Field(description="The body sent (the same bytes on every attempt).")
    log: list[WebhookAttemptRead] = Field(description="Every attempt, oldest first.")


class WebhookDeliveryList(BaseModel):
    data: list[WebhookDeliveryRead] = Field(description="Newest first.")
    total: int = Field(description="Deliveries of this hook matching the filter.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page.")
