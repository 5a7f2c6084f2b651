"""Predictions in the API process: the exported ONNX classifier run by ONNX Runtime (CPU), no torch.

A :class:`LoadedModel` holds one ``onnxruntime.InferenceSession`` with the model's ``classes.json`` and
``preprocess.json``. Sessions are cached per model id in a small LRU (``settings.predict_cache_size``; models are
immutable, so the cache never goes stale); ``InferenceSession.run`` is thread-safe, so the threadpool that runs
the sync routes shares them. ``settings.predict_threads`` sets the intra-op threads of each session.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from app.config import Settings
from app.imaging import PreprocessConfig, preprocess
from app.storage import BlobStore, StorageError

REQUIRED_ARTIFACTS = ("model.onnx", "classes.json", "preprocess.json")


class ModelUnavailable(RuntimeError):
    """The model's artifacts are missing or unreadable (the message says which)."""


@dataclass
class LoadedModel:
    model_id: str
    session: ort.InferenceSession
    classes: list[str]
    preprocess: PreprocessConfig
    input_name: str
    output_name: str

    def logits(self, images: Sequence, *, batch_size: int) -> np.ndarray:
        """(N, K) logits for PIL images, preprocessed exactly like the torch eval transform."""
        out = []
        for i in range(0, len(images), batch_size):
            batch = np.stack([preprocess(img, self.preprocess) for img in images[i : i + batch_size]])  # (B,3,S,S)
            (logits,) = self.session.run([self.output_name], {self.input_name: batch})
            out.append(np.asarray(logits, dtype=np.float32).reshape(len(batch), -1))  # (B, K)
        result = np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)
        if result.shape[1] != len(self.classes):
            raise ModelUnavailable(
                f"model {self.model_id}: the ONNX model gives {result.shape[1]} logits for {len(self.classes)} classes"
            )
        return result


class ModelCache:
    """An LRU of :class:`LoadedModel` by model id, safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def get(self, *, model_id: str, artifacts: dict[str, str], storage: BlobStore, settings: Settings) -> LoadedModel:
        with self._lock:
            loaded = self._models.get(model_id)
            if loaded is not None:
                self._models.move_to_end(model_id)
                return loaded
        loaded = load_model(model_id=model_id, artifacts=artifacts, storage=storage, settings=settings)
        with self._lock:
            self._models[model_id] = loaded
            self._models.move_to_end(model_id)
            while len(self._models) > max(1, settings.predict_cache_size):
                self._models.popitem(last=False)
        return loaded

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


def session_options(*, threads: int, spinning: bool) -> ort.SessionOptions:
    """The ONNX Runtime options of a /predict session (``TAGSIFT_PREDICT_THREADS``/``_SPINNING``)."""
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def load_model(*, model_id: str, artifacts: dict[str, str], storage: BlobStore, settings: Settings) -> LoadedModel:
    missing = [name for name in REQUIRED_ARTIFACTS if name not in artifacts]
    if missing:
        raise ModelUnavailable(f"model {model_id} has no {', '.join(missing)} artifact")
    try:
        classes = json.loads(storage.get(artifacts["classes.json"]))
        pre = PreprocessConfig.from_dict(json.loads(storage.get(artifacts["preprocess.json"])))
        options = session_options(threads=settings.predict_threads, spinning=settings.predict_spinning)
        # the store's own file when it is on this disk, else the bytes (an object store: nothing is written here;
        # the LRU of sessions above is this process's cache)
        local = storage.path_if_local(artifacts["model.onnx"])
        onnx = str(local) if local is not None else storage.get(artifacts["model.onnx"])
        session = ort.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])
    except FileNotFoundError as exc:
        raise ModelUnavailable(f"model {model_id}: an artifact blob is missing from storage ({exc})") from None
    except StorageError:  # the store is down: a 503, not a broken model
        raise
    except Exception as exc:  # bad JSON, bad preprocess.json, ONNX Runtime's own errors (InvalidGraph, ...)
        raise ModelUnavailable(f"model {model_id}: unreadable artifacts ({exc})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ModelUnavailable(f"model {model_id}: classes.json is not a list of names")
    return LoadedModel(
        model_id=model_id,
        session=session,
        classes=classes,
        preprocess=pre,
        input_name=session.get_inputs()[0].name,
        output_name=session.get_outputs()[0].name,
    )


_cache = ModelCache()


def get_model_cache() -> ModelCache:
    """The process-wide session cache."""
    return _cache


def scores(logits: np.ndarray, allowed: Sequence[int] | None) -> list[tuple[int, float]]:
    """(class index, probability) by decreasing probability: a softmax over ``allowed`` (all classes if None)."""
    idx = np.arange(logits.shape[0]) if allowed is None else np.asarray(sorted(set(allowed)), dtype=np.int64)
    z = logits[idx].astype(np.float64)
    z = np.exp(z - z.max())
    p = z / z.sum()
    order = np.argsort(-p, kind="stable")
    return list(zip(idx[order].tolist(), p[order].tolist(), strict=True))
