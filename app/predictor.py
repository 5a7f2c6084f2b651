"""Predictions in the API process: ONNX Runtime (CPU) and NumPy, no torch.

A model is one of two layouts (``app.towers.layout``): a shared image tower and this model's head (``tower.onnx`` +
``head.npz``: the tower's session gives unit-length features, :class:`app.towers.Head` turns them into logits), or
one ``model.onnx`` (image -> logits; models stored before towers were shared). Either way a :class:`LoadedModel`
holds the model's ``classes.json``, ``preprocess.json`` and head, and runs its ONNX file through a
:class:`OnnxSession` that :class:`ModelCache` keeps **per blob**: every model of a backbone shares one session of
its tower.

Two LRUs, both safe to share between threads (``InferenceSession.run`` is thread-safe, so the threadpool that runs
the sync routes shares the sessions): sessions by blob sha (``settings.predict_cache_size``: each holds a tower or a
whole model, hundreds of MB for a ViT) and loaded models by model id (``settings.predict_head_cache_size``: a head
is K x D floats). Models and blobs are immutable, so neither cache goes stale. ``settings.predict_threads`` sets the
intra-op threads of each session.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from app.config import Settings
from app.imaging import PreprocessConfig, preprocess
from app.storage import BlobStore, StorageError
from app.towers import LAYOUTS, Head, layout

REQUIRED_ARTIFACTS = ("classes.json", "preprocess.json")


class ModelUnavailable(RuntimeError):
    """The model's artifacts are missing or unreadable (the message says which)."""


@dataclass
class OnnxSession:
    """One ONNX Runtime session of blob ``sha`` (a tower or a whole model), shared by every model that uses it."""

    sha: str
    session: ort.InferenceSession
    input_name: str
    output_name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)


@dataclass
class LoadedModel:
    model_id: str
    classes: list[str]
    preprocess: PreprocessConfig
    onnx_sha: str  # the blob its session runs: tower.onnx, or model.onnx
    head: Head | None  # None: model.onnx gives the logits itself
    session_of: Callable[[], OnnxSession]  # the cache's shared session of onnx_sha (loaded again if evicted)

    def logits(self, images: Sequence, *, batch_size: int) -> np.ndarray:
        """(N, K) logits for PIL images, preprocessed exactly like the torch eval transform."""
        out = []
        for i in range(0, len(images), batch_size):
            batch = np.stack([preprocess(img, self.preprocess) for img in images[i : i + batch_size]])  # (B,3,S,S)
            out.append(self.run(batch))  # (B, K)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(B, K) logits of preprocessed images (B, 3, S, S) (``app.lazy_images`` preprocesses one at a time)."""
        result = self.session_of().run(batch)
        if self.head is not None:
            try:
                result = self.head.logits(result)
            except ValueError as exc:
                raise ModelUnavailable(f"model {self.model_id}: {exc}") from None
        if result.shape[1] != len(self.classes):
            raise ModelUnavailable(
                f"model {self.model_id}: the ONNX model gives {result.shape[1]} logits for {len(self.classes)} classes"
            )
        return result


class _LRU:
    """An LRU by key, bounded by ``limit()`` at each insert (callers hold the cache's lock)."""

    def __init__(self) -> None:
        self.items: OrderedDict = OrderedDict()

    def get(self, key):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key, value, limit: int) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > max(1, limit):
            self.items.popitem(last=False)


class ModelCache:
    """Loaded models by model id and their ONNX Runtime sessions by blob sha (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model_lru = _LRU()
        self._session_lru = _LRU()
        self._loading: dict[str, threading.Lock] = {}  # one load per blob at a time: no second copy of a tower

    @property
    def _models(self) -> OrderedDict[str, LoadedModel]:
        return self._model_lru.items

    @property
    def sessions(self) -> OrderedDict[str, OnnxSession]:
        """The sessions held now, by blob sha (least recently used first)."""
        return self._session_lru.items

    def get(self, *, model_id: str, artifacts: dict[str, str], storage: BlobStore, settings: Settings) -> LoadedModel:
        with self._lock:
            loaded = self._model_lru.get(model_id)
        if loaded is not None:
            return loaded
        loaded = load_model(model_id=model_id, artifacts=artifacts, storage=storage, settings=settings, cache=self)
        session = loaded.session_of()  # a broken ONNX file answers now (409), not at the first image
        dims = session.session.get_outputs()[0].shape
        if loaded.head is not None and isinstance(dims[-1], int) and dims[-1] != loaded.head.dim:
            raise ModelUnavailable(
                f"model {model_id}: the tower gives {dims[-1]} features, head.npz takes {loaded.head.dim}"
            )
        with self._lock:
            self._model_lru.put(model_id, loaded, settings.predict_head_cache_size)
        return loaded

    def session(self, sha: str, *, what: str, storage: BlobStore, settings: Settings) -> OnnxSession:
        """The shared session of blob ``sha``, created on first use (``what`` names the file in errors)."""
        with self._lock:
            found = self._session_lru.get(sha)
            if found is not None:
                return found
            loading = self._loading.setdefault(sha, threading.Lock())
        with loading:
            with self._lock:
                found = self._session_lru.get(sha)
            if found is not None:
                return found
            try:
                created = _open_session(sha, what=what, storage=storage, settings=settings)
                with self._lock:
                    self._session_lru.put(sha, created, settings.predict_cache_size)
            finally:
                with self._lock:
                    self._loading.pop(sha, None)
            return created

    def clear(self) -> None:
        with self._lock:
            self._model_lru.items.clear()
            self._session_lru.items.clear()

    def __len__(self) -> int:
        return len(self._model_lru.items)


def session_options(*, threads: int, spinning: bool) -> ort.SessionOptions:
    """The ONNX Runtime options of a /predict session (``TAGSIFT_PREDICT_THREADS``/``_SPINNING``)."""
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _open_session(sha: str, *, what: str, storage: BlobStore, settings: Settings) -> OnnxSession:
    try:
        options = session_options(threads=settings.predict_threads, spinning=settings.predict_spinning)
        # the store's own file when it is on this disk, else the bytes (an object store: nothing is written here;
        # the LRU of sessions is this process's cache)
        local = storage.path_if_local(sha)
        onnx = str(local) if local is not None else storage.get(sha)
        session = ort.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])
    except FileNotFoundError as exc:
        raise ModelUnavailable(f"{what}: an artifact blob is missing from storage ({exc})") from None
    except StorageError:  # the store is down: a 503, not a broken model
        raise
    except Exception as exc:  # ONNX Runtime's own errors (InvalidGraph, InvalidProtobuf, ...)
        raise ModelUnavailable(f"{what}: unreadable ONNX file ({exc})") from None
    return OnnxSession(
        sha=sha, session=session, input_name=session.get_inputs()[0].name, output_name=session.get_outputs()[0].name
    )


def load_model(
    *, model_id: str, artifacts: dict[str, str], storage: BlobStore, settings: Settings, cache: ModelCache | None = None
) -> LoadedModel:
    """The model's classes, preprocessing and head; its session comes from ``cache`` (the process-wide one)."""
    kind = layout(artifacts)
    missing = [name for name in REQUIRED_ARTIFACTS if name not in artifacts]
    if kind is None:
        missing.append(" or ".join(" + ".join(names) for names in LAYOUTS.values()))
    if missing:
        raise ModelUnavailable(f"model {model_id} has no {', '.join(missing)} artifact")
    onnx_name = LAYOUTS[kind][0]
    try:
        classes = json.loads(storage.get(artifacts["classes.json"]))
        pre = PreprocessConfig.from_dict(json.loads(storage.get(artifacts["preprocess.json"])))
        head = Head.from_npz(storage.get(artifacts["head.npz"])) if kind == "tower" else None
    except FileNotFoundError as exc:
        raise ModelUnavailable(f"model {model_id}: an artifact blob is missing from storage ({exc})") from None
    except StorageError:  # the store is down: a 503, not a broken model
        raise
    except Exception as exc:  # bad JSON, bad preprocess.json, a bad head.npz
        raise ModelUnavailable(f"model {model_id}: unreadable artifacts ({exc})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ModelUnavailable(f"model {model_id}: classes.json is not a list of names")
    if head is not None and head.classes != len(classes):
        raise ModelUnavailable(f"model {model_id}: head.npz has {head.classes} classes, classes.json {len(classes)}")
    cache = cache or _cache
    sha = artifacts[onnx_name]

    def session_of() -> OnnxSession:
        return cache.session(sha, what=f"model {model_id}: {onnx_name}", storage=storage, settings=settings)

    return LoadedModel(
        model_id=model_id, classes=classes, preprocess=pre, onnx_sha=sha, head=head, session_of=session_of
    )


_cache = ModelCache()


def get_model_cache() -> ModelCache:
    """The process-wide cache of models and sessions."""
    return _cache


def scores(logits: np.ndarray, allowed: Sequence[int] | None) -> list[tuple[int, float]]:
    """(class index, probability) by decreasing probability: a softmax over ``allowed`` (all classes if None)."""
    idx = np.arange(logits.shape[0]) if allowed is None else np.asarray(sorted(set(allowed)), dtype=np.int64)
    z = logits[idx].astype(np.float64)
    z = np.exp(z - z.max())
    p = z / z.sum()
    order = np.argsort(-p, kind="stable")
    return list(zip(idx[order].tolist(), p[order].tolist(), strict=True))
