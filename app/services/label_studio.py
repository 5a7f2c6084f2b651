"""Label Studio: tagsift as its ML backend (``/label-studio/{dataset_id}``) and labels exported as its tasks.

The backend protocol is Label Studio's (``label_studio/ml/api_connector.py`` of 1.23): ``GET health``, ``POST
setup`` (before every prediction run; answers the model version), ``POST predict`` (``{"tasks": [...]}`` to
``{"results": [...]}``, one per task, in order) and ``POST webhook`` (the project's events,
``app.services.label_studio_webhook``). The model is the dataset's newest; its id is the ``model_version``, stable
until a new model is trained, so Label Studio predicts each task once per model.

Images: a task's image is the dataset's item of the same file name (``data.image``'s last segment, with or without
Label Studio's upload prefix, as in the import); otherwise it is read from ``TAGSIFT_LABEL_STUDIO_URL`` (a relative
``/data/...`` path or a URL on that origin, no redirects) with ``TAGSIFT_LABEL_STUDIO_TOKEN`` or the
``access_token`` Label Studio sent to ``/setup``. No other URL is ever fetched.

Predictions score the project's ``Choices`` that are classes of the model; for a task that is one of the dataset's
items, only its candidates among them (as ``GET /predict?item_id=`` does).
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Row, or_, select
from sqlalchemy.orm import Session

from app.checks import shorten
from app.config import Settings
from app.errors import Conflict, FieldErrors, InvalidInput
from app.lazy_images import Source, logits_of
from app.models import Dataset, Item, Model, Owner
from app.predictor import scores
from app.services.datasets import get_dataset
from app.services.items import image_url
from app.services.label_studio_images import FetchError, fetch_image, same_origin
from app.services.models import loaded_model
from app.services.streaming import item_pages, stream_in_snapshot
from app.storage import BlobStore
from app.uploads.label_studio import image_names

log = logging.getLogger(__name__)

MODEL_CLASS = "tagsift"
#: ``model_version`` before the dataset has a model (``/predict`` then answers 409).
UNTRAINED = "untrained"
MAX_TASKS = 1000
MAX_LABEL_CONFIG = 1024 * 1024


@dataclass(frozen=True)
class ChoicesControl:
    """The labeling config's ``Choices`` (``from_name``), the ``Image`` it labels (``to_name``) and its data key."""

    from_name: str
    to_name: str
    choices: list[str]
    image_key: str


def parse_label_config(config: object, *, field: str) -> ChoicesControl:
    """The first ``Choices`` of a labeling config and its ``Image``; 422 naming ``field`` when there is none."""
    if not isinstance(config, str) or not config.strip():
        raise invalid(field, f"{field}: the project's labeling config is missing")
    if len(config) > MAX_LABEL_CONFIG:
        raise invalid(field, f"{field}: the labeling config is over {MAX_LABEL_CONFIG} characters")
    try:
        root = ET.fromstring(config)
    except (ET.ParseError, ValueError) as exc:
        raise invalid(field, f"{field}: the labeling config is not valid XML ({exc})") from None
    control = next((el for el in root.iter("Choices")), None)
    if control is None or not control.get("name") or not control.get("toName"):
        raise invalid(field, f"{field}: the labeling config has no <Choices name=... toName=...> (tagsift classifies)")
    to_name = control.get("toName", "").split(",")[0]
    image = next((el for el in root.iter("Image") if el.get("name") == to_name), None)
    if image is None or not (image.get("value") or "").startswith("$"):
        raise invalid(field, f'{field}: <Choices toName={to_name!r}> does not name an <Image value="$...">')
    choices = [c.get("alias") or c.get("value") for c in control.iter("Choice")]
    return ChoicesControl(
        from_name=control.get("name", ""),
        to_name=to_name,
        choices=[c for c in choices if c],
        image_key=image.get("value", "$image")[1:],
    )


def invalid(field: str, message: str, item: str | None = None) -> InvalidInput:
    errors = FieldErrors()
    errors.add(field=field, message=message, item=item)
    return InvalidInput(message, errors=errors)


def latest_model(session: Session, dataset: Dataset) -> Model | None:
    """The dataset's newest model (the backend's model; its id is the ``model_version``)."""
    return session.scalar(
        select(Model)
        .where(Model.dataset_id == dataset.id, Model.owner_id == dataset.owner_id)
        .order_by(Model.created_at.desc(), Model.id.desc())
        .limit(1)
    )


# --- tokens sent to /setup ----------------------------------------------------------------------------------

_tokens_lock = threading.Lock()
#: (owner id, dataset id) -> the ``access_token`` of the last ``/setup`` from TAGSIFT_LABEL_STUDIO_URL (this process).
_tokens: dict[tuple[str, str], str] = {}
#: (owner id, dataset id) -> the labeling config (``schema``) of the last accepted ``/setup`` (this process): a
#: ``predict`` without ``label_config`` uses it. At most :data:`MAX_CONFIGS` (the oldest goes first).
_configs: dict[tuple[str, str], str] = {}
MAX_CONFIGS = 256


# --- the routes' work ---------------------------------------------------------------------------------------


def health(*, session: Session, owner: Owner, dataset_id: str) -> dict:
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    model = latest_model(session, dataset)
    return {"status": "UP", "model_class": MODEL_CLASS, "model_version": model.id if model else UNTRAINED}


def setup(*, session: Session, owner: Owner, dataset_id: str, body: dict, settings: Settings) -> dict:
    """Check the project's config against the dataset; remember its token; answer the model version."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    control = parse_label_config(body.get("schema"), field="schema")
    shared = [c for c in control.choices if c in set(dataset.classes)]
    if not shared:
        raise invalid(
            "schema",
            f"schema: the project's choices ({shorten(', '.join(control.choices), 200)}) share no class with dataset "
            f"{dataset.id} ({shorten(', '.join(dataset.classes), 200)})",
        )
    with _tokens_lock:
        _configs.pop((owner.id, dataset.id), None)
        if len(_configs) >= MAX_CONFIGS:
            del _configs[next(iter(_configs))]
        _configs[(owner.id, dataset.id)] = body["schema"]
    hostname, token = body.get("hostname"), body.get("access_token")
    base = settings.label_studio_url.rstrip("/")
    if base and isinstance(hostname, str) and isinstance(token, str) and token and same_origin(hostname, base):
        with _tokens_lock:
            _tokens[(owner.id, dataset.id)] = token
    model = latest_model(session, dataset)
    return {"model_version": model.id if model else UNTRAINED}


@dataclass
class _Task:
    name: str
    ref: str
    item: Item | None = None


def predict(*, session: Session, storage: BlobStore, owner: Owner, dataset_id: str, body: dict, settings: Settings):
    """One result per task, in order: the top choice with its probability, ``model_version`` the model id."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise invalid("tasks", "tasks: a non-empty list of Label Studio tasks")
    if len(tasks) > MAX_TASKS:
        raise invalid("tasks", f"tasks: {len(tasks)} tasks, over the limit of {MAX_TASKS} per request")
    control = parse_label_config(_label_config(owner, dataset, body), field="label_config")
    model = latest_model(session, dataset)
    if model is None:
        raise Conflict(
            f"dataset {dataset.id} has no trained model yet: start one (POST /datasets/{dataset.id}/jobs, or "
            "'Start Training' in Label Studio)",
            code="no_model",
        )
    loaded = loaded_model(model=model, storage=storage, settings=settings)
    index = {c: i for i, c in enumerate(loaded.classes)}
    choices = [c for c in control.choices if c in index]
    if not choices:
        raise invalid("label_config", f"label_config: none of the project's choices is a class of model {model.id}")

    errors = FieldErrors()
    parsed: list[_Task] = []
    for i, task in enumerate(tasks):
        tid = task.get("id") if isinstance(task, dict) else None
        name = f"task {tid}" if isinstance(tid, (int, str)) and not isinstance(tid, bool) else f"task at index {i}"
        data = task.get("data") if isinstance(task, dict) else None
        ref = data.get(control.image_key) if isinstance(data, dict) else None
        if not isinstance(ref, str) or not ref.strip():
            key = f"data.{control.image_key}"
            errors.add(field=key, item=name, message=f"{name}: {key} is missing (the task's image)")
            continue
        parsed.append(_Task(name=name, ref=ref))
    if errors:
        raise InvalidInput("; ".join(e.message for e in errors), errors=errors)

    items = items_by_image(session, dataset.id, [t.ref for t in parsed])
    token = settings.label_studio_token
    if not token:
        with _tokens_lock:
            token = _tokens.get((owner.id, dataset.id), "")
    for t in parsed:
        t.item = items.get(t.ref)

    def source(t: _Task) -> Source:  # read when its turn comes; one decode per stored image or per URL
        if t.item is not None:
            return Source(key=f"sha256:{t.item.sha256}", load=lambda: storage.get(t.item.sha256))
        return Source(key=f"url:{t.ref}", load=lambda: fetch_image(t.ref, settings=settings, token=token))

    logits, failures = logits_of(loaded, [source(t) for t in parsed], settings, catch=(FetchError, FileNotFoundError))
    for i, exc in failures:
        t = parsed[i]
        errors.add(
            field=f"data.{control.image_key}",
            item=t.name,
            message=f"{t.name}: data.{control.image_key} {shorten(t.ref, 200)!r}: {exc}",
        )
    if errors:
        raise InvalidInput("; ".join(e.message for e in errors[:5]), errors=errors)

    results = []
    for t, row in zip(parsed, logits, strict=True):
        allowed = choices
        if t.item is not None:
            narrowed = [c for c in choices if c in set(t.item.candidates)]
            allowed = narrowed or choices
        (best, p), *_ = scores(row, [index[c] for c in allowed])
        label = loaded.classes[best]
        results.append(
            {
                "model_version": model.id,
                "score": p,
                "result": [_region(control.from_name, control.to_name, label, score=p)],
            }
        )
    return {"results": results}


def _label_config(owner: Owner, dataset: Dataset, body: dict) -> object:
    """The predict body's ``label_config``, or else the one the dataset's last accepted ``/setup`` gave."""
    config = body.get("label_config")
    if config is None:
        with _tokens_lock:
            config = _configs.get((owner.id, dataset.id))
        if config is None:
            raise invalid("label_config", "label_config: missing, and no /setup of this dataset gave one: send it")
    return config


def _region(from_name: str, to_name: str, label: str, *, score: float | None = None) -> dict:
    region: dict = {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [label]}}
    if score is not None:
        region["score"] = score
    return region


def items_by_image(session: Session, dataset_id: str, refs: list[str]) -> dict[str, Item]:
    """ref -> the dataset's one item whose file name is the ref's (prefixed name first); ambiguous names match none."""
    names = {n for ref in refs for n in image_names(ref)}
    if not names:
        return {}
    conditions = [Item.file.in_(names)]
    conditions += [Item.file.like("%/" + _like_escape(n), escape="\\") for n in names]
    rows = session.scalars(select(Item).where(Item.dataset_id == dataset_id, or_(*conditions)))
    by_base: dict[str, list[Item]] = {}
    for item in rows:
        by_base.setdefault(posixpath.basename(item.file), []).append(item)
    out: dict[str, Item] = {}
    for ref in refs:
        for name in image_names(ref):
            found = by_base.get(name, [])
            if len(found) == 1:
                out[ref] = found[0]
                break
            if found:
                break  # several items share the name: not one of ours for sure
    return out


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# --- the export -----------------------------------------------------------------------------------------------


def export_tasks(
    *, session: Session, owner: Owner, dataset_id: str, settings: Settings, from_name: str, to_name: str
) -> Iterator[str]:
    """The dataset as Label Studio tasks (a JSON list), in upload order, streamed in constant memory
    (``app.services.streaming``; a 404 or 422 is answered before streaming starts): a model's tag as a prediction
    (``model_version`` the model id, ``score`` its confidence), a reviewer's tag as an annotation, no tag as a bare
    task. The image is ``data.image`` (the item's image URL), for a project whose ``<Image value="$image">``."""
    dataset = get_dataset(session=session, owner=owner, dataset_id=dataset_id)
    if not from_name.strip() or not to_name.strip():
        raise invalid("from_name", "from_name, to_name: the Choices and Image names of the Label Studio project")
    session.commit()  # the request's connection goes back to the pool: the rows stream from a snapshot of their own
    stmt = select(
        Item.seq, Item.id, Item.file, Item.candidates, Item.label, Item.label_source, Item.model_id, Item.confidence
    ).where(Item.dataset_id == dataset.id)

    def body(snapshot: Session, _: None) -> Iterator[str]:
        # json.dumps of the whole list, in pieces: "[", the tasks with ", " between them, "]"
        sep = "["
        for rows in item_pages(snapshot, stmt):
            yield sep + ", ".join(json.dumps(_task(row, settings, from_name, to_name)) for row in rows)
            sep = ", "
        yield "[]" if sep == "[" else "]"

    return stream_in_snapshot(lambda _: None, body)[1]


def _task(item: Row, settings: Settings, from_name: str, to_name: str) -> dict:
    task: dict = {
        "data": {
            "image": image_url(item.id, settings),
            "tagsift_item_id": item.id,
            "file": item.file,
            "candidates": item.candidates,
        }
    }
    if item.label is not None and item.label_source == "reviewer":
        task["annotations"] = [{"result": [_region(from_name, to_name, item.label)]}]
    elif item.label is not None:
        task["predictions"] = [
            {
                "model_version": item.model_id or "tagsift",
                "score": item.confidence,
                "result": [_region(from_name, to_name, item.label, score=item.confidence)],
            }
        ]
    return task
