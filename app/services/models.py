"""Models: read, export zip, and predictions (by stored item or uploaded images) with ONNX Runtime.

Predictions are a softmax of the model's logits over all its classes, or, when restricted, over the given
candidates only (renormalised, like the labels a job writes). ``GET /predict?item_id=`` restricts to the item's
candidates by default (``restrict_to_candidates=false`` scores every class). Candidates that are not classes of
the model answer 422 naming them; ``top_k`` is capped at the number of classes scored.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict, FieldError, InvalidInput, NotFound
from app.export_kit import predict_script
from app.imaging import PreprocessConfig, open_image
from app.jsonread import read_field
from app.lazy_images import Source, logits_of
from app.models import Model, Owner
from app.predictor import LoadedModel, ModelUnavailable, get_model_cache, scores
from app.schemas import ModelList, ModelRead, Prediction, PredictResponse, ScoredLabel
from app.services.datasets import get_dataset
from app.services.items import get_item
from app.services.lookup import get_owned
from app.services.pages import keyset_page
from app.storage import BlobStore
from app.towers import LAYOUTS, Head, layout, merged_suffix
from app.ttl_cache import TTLCache

#: Zip order: the ONNX file(s) first, then the head and side files (anything else stored follows, by name).
EXPORT_ORDER = (
    "model.onnx",
    "tower.onnx",
    "tower.json",
    "head.npz",
    "classes.json",
    "preprocess.json",
    "model_card.md",
)
#: Written by the export itself, not stored: the whole preprocessing in preprocess.json and the card, and predict.py.
EXPORT_EXTRA = ("model.json", "predict.py")
#: Left out of a merged export: model.onnx holds the tower and the head.
MERGED_AWAY = ("tower.onnx", "tower.json", "head.npz")


def get_model(*, session: Session, owner: Owner, model_id: str) -> Model:
    """The owner's model; 404 for a missing id and for another owner's."""
    return get_owned(session, Model, model_id, owner=owner, what="model")


def model_read(model: Model, settings: Settings) -> ModelRead:
    return ModelRead(
        id=model.id,
        job_id=model.job_id,
        dataset_id=model.dataset_id,
        backbone=model.backbone,
        method=model.method,
        classes=model.classes,
        metrics=model.metrics or {},
        artifacts=sorted((model.artifacts or {}).keys()),
        export_url=f"{settings.public_url.rstrip('/')}/models/{model.id}/export",
        created_at=model.created_at,
    )


def read_model(*, session: Session, owner: Owner, model_id: str, settings: Settings) -> ModelRead:
    return model_read(get_model(session=session, owner=owner, model_id=model_id), settings)


def list_models(
    *, session: Session, owner: Owner, settings: Settings, cursor: str | None, limit: int, dataset_id: str | None
) -> ModelList:
    """A page of the owner's models, oldest first (``app.services.pages``); ``dataset_id`` filters (404 when it is
    not the owner's dataset)."""
    stmt = select(Model).where(Model.owner_id == owner.id)
    if dataset_id is not None:
        stmt = stmt.where(Model.dataset_id == get_dataset(session=session, owner=owner, dataset_id=dataset_id).id)
    page = keyset_page(session, stmt, Model, cursor=cursor, limit=limit)
    return ModelList(data=[model_read(m, settings) for m in page.rows], next_cursor=page.next_cursor, total=page.total)


def export_model(
    *, session: Session, storage: BlobStore, owner: Owner, model_id: str, settings: Settings, merged: bool = False
) -> str:
    """A temporary zip (the caller deletes it): the model's ONNX file(s), classes.json, preprocess.json,
    model_card.md, model.json (this model's metadata) and predict.py. Written to a file, not memory: a ViT image
    tower is hundreds of MB.

    A model on a shared tower (``app.towers``) exports tower.onnx, tower.json and head.npz; with ``merged`` the
    tower and the head become one model.onnx (image -> logits: the tower's bytes streamed, then the head's nodes,
    ``app.towers.merged_suffix``). A model stored as one model.onnx exports it as it is (``merged`` changes nothing).

    The zip describes itself: preprocess.json is rewritten in full (every step, :meth:`PreprocessConfig.to_dict`,
    also for models stored before it said them), the card gets a "Preprocessing" section with the same steps, and
    predict.py (``app/export_kit``) reproduces /predict's scores with onnxruntime, NumPy and Pillow only, for
    either layout."""
    model = get_model(session=session, owner=owner, model_id=model_id)
    artifacts = dict(model.artifacts or {})
    kind = layout(artifacts) or "model"
    needed = ("classes.json", "preprocess.json", *LAYOUTS[kind])
    missing = [name for name in needed if name not in artifacts or not storage.exists(artifacts[name])]
    if missing:
        raise Conflict(
            f"model {model.id}: artifacts missing from storage: {', '.join(missing)}", code="model_incomplete"
        )
    merge = merged and kind == "tower"
    try:
        pre = PreprocessConfig.from_dict(json.loads(storage.get(artifacts["preprocess.json"])))
    except (ValueError, KeyError, TypeError) as exc:
        raise Conflict(f"model {model.id}: unreadable preprocess.json ({exc})", code="model_incomplete") from None
    suffix = merged_suffix(_head(model, storage.get(artifacts["head.npz"]))) if merge else b""
    card = storage.get(artifacts["model_card.md"]).decode() if "model_card.md" in artifacts else _fallback_card(model)
    if "## Preprocessing" not in card:
        card = card.rstrip("\n") + "\n\n" + pre.markdown(tower=kind == "tower" and not merge)
    written = {
        "preprocess.json": json.dumps(pre.to_dict(), indent=1) + "\n",
        "model_card.md": card,
        "model.json": json.dumps(model_read(model, settings).model_dump(mode="json"), indent=2),
        "predict.py": predict_script(),
    }
    if merge:
        artifacts = {name: sha for name, sha in artifacts.items() if name not in MERGED_AWAY}
        artifacts["model.onnx"] = model.artifacts["tower.onnx"]  # streamed, then the head's nodes appended
    tmp_dir = settings.data_dir / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=tmp_dir, prefix="export-", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w") as zf:
            stored = [n for n in artifacts if n not in written]
            names = [n for n in (*EXPORT_ORDER, *EXPORT_EXTRA) if n in written or n in artifacts]
            names += sorted(set(stored) - set(names))
            for name in names:
                info = zipfile.ZipInfo(name, date_time=model.created_at.timetuple()[:6])
                info.compress_type = zipfile.ZIP_STORED if name.endswith(".onnx") else zipfile.ZIP_DEFLATED
                if name in written:
                    zf.writestr(info, written[name])
                    continue
                if not storage.exists(artifacts[name]):
                    continue
                with storage.open(artifacts[name]) as src, zf.open(info, "w", force_zip64=True) as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                    if merge and name == "model.onnx":
                        dst.write(suffix)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _head(model: Model, data: bytes) -> Head:
    """The model's head, checked against its classes (409 when it is not a head or not this model's)."""
    try:
        head = Head.from_npz(data)
    except ValueError as exc:
        raise Conflict(f"model {model.id}: unreadable head.npz ({exc})", code="model_incomplete") from None
    if head.classes != len(model.classes):
        raise Conflict(
            f"model {model.id}: head.npz has {head.classes} classes, the model {len(model.classes)}",
            code="model_incomplete",
        )
    return head


def _fallback_card(model: Model) -> str:
    return (
        f"# tagsift model {model.id}\n\n- backbone: {model.backbone}\n- method: {model.method}\n"
        f"- classes: {len(model.classes)}\n- job: {model.job_id}\n- metrics: {json.dumps(model.metrics)}\n"
    )


# --- predictions ------------------------------------------------------------------------------------------


@dataclass
class PredictImage:
    file: str
    data: bytes


def loaded_model(*, model: Model, storage: BlobStore, settings: Settings) -> LoadedModel:
    """The model ready to predict, from the per-process model cache (the Label Studio backend uses it too)."""
    return _loaded_by_id(model_id=model.id, artifacts=dict(model.artifacts or {}), storage=storage, settings=settings)


def _loaded_by_id(*, model_id: str, artifacts: dict[str, str], storage: BlobStore, settings: Settings) -> LoadedModel:
    try:
        return get_model_cache().get(model_id=model_id, artifacts=artifacts, storage=storage, settings=settings)
    except ModelUnavailable as exc:
        raise Conflict(str(exc), code="model_incomplete") from None


#: (owner id, model id) -> the model's artifacts, so that a burst of /predict calls does not read the same
#: immutable row every time; kept ``settings.lookup_cache_seconds`` (a deleted model answers until then).
_model_artifacts: TTLCache[dict[str, str]] = TTLCache()


def _owned_artifacts(*, session: Session, owner: Owner, model_id: str, settings: Settings) -> dict[str, str]:
    """The artifacts of the owner's model ``model_id`` (404 otherwise), from the per-process cache when fresh."""
    artifacts = _model_artifacts.get((owner.id, model_id))
    if artifacts is None:
        model = get_model(session=session, owner=owner, model_id=model_id)
        artifacts = dict(model.artifacts or {})
        _model_artifacts.put((owner.id, model_id), artifacts, settings.lookup_cache_seconds)
    return artifacts


def _allowed(loaded: LoadedModel, candidates: list[str] | None, *, item: str | None) -> list[int] | None:
    if candidates is None:
        return None
    index = {c: i for i, c in enumerate(loaded.classes)}
    unknown = [c for c in candidates if c not in index]
    if unknown:
        where = f" ({item})" if item else ""
        raise InvalidInput(
            f"candidates{where}: not classes of model {loaded.model_id}: {', '.join(map(repr, unknown))}",
            errors=[FieldError(field="candidates", item=item, message=f"not classes of this model: {unknown}")],
        )
    return [index[c] for c in candidates]


def _prediction(loaded: LoadedModel, logits, allowed: list[int] | None, top_k: int, **ids: str | None) -> Prediction:
    ranked = scores(logits, allowed)
    # model_construct: the values are ours (class names and probabilities), validating them again costs per request
    top = [ScoredLabel.model_construct(label=loaded.classes[i], score=p) for i, p in ranked[:top_k]]
    return Prediction.model_construct(
        file=ids.get("file"),
        item_id=ids.get("item_id"),
        label=top[0].label,
        score=top[0].score,
        top_k=top,
        restricted_to_candidates=allowed is not None,
    )


def predict_item(
    *,
    session: Session,
    storage: BlobStore,
    owner: Owner,
    model_id: str,
    item_id: str,
    top_k: int,
    restrict_to_candidates: bool,
    settings: Settings,
) -> PredictResponse:
    """Predict a stored item's tag, by default among its candidates that the model knows."""
    model = get_model(session=session, owner=owner, model_id=model_id)
    item = get_item(session=session, owner=owner, item_id=item_id)
    loaded = loaded_model(model=model, storage=storage, settings=settings)
    allowed = None
    if restrict_to_candidates:
        known = [c for c in item.candidates if c in set(loaded.classes)]
        if not known:
            raise InvalidInput(
                f"item {item.id}: none of its candidates is a class of model {model.id}",
                errors=[FieldError(field="item_id", item=item.id, message="no candidate is a class of the model")],
            )
        allowed = _allowed(loaded, known, item=item.id)
    try:
        data = storage.get(item.sha256)
    except FileNotFoundError:
        raise NotFound(f"item {item.id}: the image blob is missing from storage", code="blob_missing") from None
    logits = loaded.logits([open_image(data)], batch_size=1)[0]
    pred = _prediction(loaded, logits, allowed, top_k, file=item.file, item_id=item.id)
    return PredictResponse(model_id=model.id, predictions=[pred])


def predict_images(
    *,
    session: Session,
    storage: BlobStore,
    owner: Owner,
    model_id: str,
    images: list[PredictImage],
    candidates: list[list[str]] | list[str] | None,
    top_k: int,
    settings: Settings,
) -> PredictResponse:
    """Predict uploaded images; ``candidates`` is one list for all images or one list per image."""
    artifacts = _owned_artifacts(session=session, owner=owner, model_id=model_id, settings=settings)
    errors: list[FieldError] = []
    if not images:
        errors.append(FieldError(field="image", message="image: send one or more image files"))
    if len(images) > settings.max_predict_images:
        errors.append(
            FieldError(
                field="image", message=f"image: {len(images)} files, over the limit of {settings.max_predict_images}"
            )
        )
    per_image: list[list[str] | None] = [None] * len(images)
    if candidates is not None:
        if candidates and all(isinstance(c, list) for c in candidates):
            if len(candidates) != len(images):
                errors.append(
                    FieldError(
                        field="candidates",
                        message=f"candidates: {len(candidates)} lists for {len(images)} images (one per image)",
                    )
                )
            else:
                per_image = list(candidates)  # type: ignore[arg-type]
        else:
            per_image = [list(candidates)] * len(images)  # type: ignore[list-item]
        for i, cands in enumerate(per_image):
            if cands is not None and not cands:
                errors.append(FieldError(field="candidates", item=str(i), message=f"candidates[{i}]: empty list"))
    if errors:
        raise InvalidInput("; ".join(e.message for e in errors), errors=errors)
    loaded = _loaded_by_id(model_id=model_id, artifacts=artifacts, storage=storage, settings=settings)
    allowed = [_allowed(loaded, c, item=images[i].file) for i, c in enumerate(per_image)]
    # decoded one at a time, once per content, within TAGSIFT_PREDICT_MEMORY_BYTES (app.lazy_images)
    logits, failures = logits_of(loaded, [Source(key=None, load=lambda img=img: img.data) for img in images], settings)
    for i, exc in failures:
        errors.append(FieldError(field="image", item=images[i].file, message=f"{images[i].file}: {exc}"))
    if errors:
        raise InvalidInput("; ".join(e.message for e in errors), errors=errors)
    preds = [_prediction(loaded, logits[i], allowed[i], top_k, file=images[i].file or None) for i in range(len(images))]
    return PredictResponse(model_id=model_id, predictions=preds)


def parse_candidates(text: str | None) -> list[str] | list[list[str]] | None:
    """The ``candidates`` form field: a JSON list of tags, or a list of such lists (one per image)."""
    if text is None or not text.strip():
        return None
    value = read_field(text, field="candidates")
    ok_flat = isinstance(value, list) and all(isinstance(v, str) for v in value)
    ok_nested = isinstance(value, list) and all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value
    )
    if not (ok_flat or ok_nested) or not value:
        raise InvalidInput(
            "candidates: a non-empty JSON list of tags, or one such list per image",
            errors=[FieldError(field="candidates", message="a list of tags or a list of lists")],
        )
    return value
