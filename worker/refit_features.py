"""The live refit's features: one consolidated matrix per (dataset, backbone), in the blob store and in memory.

A job leaves one file per (backbone, image, view) in the feature cache (``ml.features``, ``worker.job_files``).
Reading 100,000 small files per refit would cost more than the refit itself, so the first refit of a dataset reads
the clean view (view 0) of every item once and writes ``refit-features/<dataset>/<backbone dir>.npz`` (the images'
sha256 and a (N, D) float32 matrix) to the store; later refits read that one object (or this process's copy in
memory) and add only the images it lacks. Nothing reads, decodes or encodes an image: an image whose features are
in neither place is reported missing (the cache was evicted, or the image came after the job, or the backbone is
another), and the refit says so.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from app.storage import BlobStore
from ml.files import atomic_write_bytes
from worker.job_files import StoreFeatureCache

log = logging.getLogger("worker.refit")

PREFIX = "refit-features"
MEMORY_ENTRIES = 4  # (dataset, backbone) matrices kept in this process (a 100k x 384 matrix is ~150 MB)

_memory: OrderedDict[tuple[str, str], tuple[dict[str, int], np.ndarray]] = OrderedDict()
_lock = threading.Lock()


class FeaturesMissing(RuntimeError):
    def __init__(self, missing: int, total: int, backbone_id: str) -> None:
        self.missing, self.total, self.backbone_id = missing, total, backbone_id
        super().__init__(
            f"{missing} of {total} items have no cached features of backbone {backbone_id} (the feature cache was"
            " evicted, the items came after the model's job, or the model is of another backbone): start a full job"
            " (POST /datasets/{id}/jobs, or 'Start a job' on the dataset's page) to label them and refit again"
        )


def matrix_key(dataset_id: str, backbone_id: str) -> str:
    from ml.features import FeatureCache  # the feature cache's folder name of the backbone

    return f"{PREFIX}/{dataset_id}/{FeatureCache._backbone_dir(backbone_id)}.npz"


def _read_npz(data: bytes) -> tuple[dict[str, int], np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        shas = [str(s) for s in z["shas"]]
        return {sha: i for i, sha in enumerate(shas)}, np.ascontiguousarray(z["features"], dtype=np.float32)


def _write_npz(index: dict[str, int], feats: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, shas=np.array(list(index), dtype="U64"), features=feats.astype(np.float32, copy=False))
    return buf.getvalue()


def features_for(
    storage: BlobStore, dataset_id: str, backbone_id: str, shas: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(features (M, D) unit-length float32, rows (M,) int: the positions in ``shas`` they belong to), for every
    image whose view-0 feature is in memory, in the consolidated matrix or in the feature cache; the rest are left
    out (the caller decides whether that is too many)."""
    key = (dataset_id, backbone_id)
    with _lock:
        index, feats = _memory.get(key, ({}, np.zeros((0, 0), np.float32)))
    lacking = [s for s in dict.fromkeys(shas) if s not in index]
    if lacking:
        index, feats = _load(storage, dataset_id, backbone_id, lacking, index, feats)
        with _lock:
            _memory[key] = (index, feats)
            _memory.move_to_end(key)
            while len(_memory) > MEMORY_ENTRIES:
                _memory.popitem(last=False)
    rows = np.array([i for i, s in enumerate(shas) if s in index], dtype=np.int64)
    picked = feats[[index[shas[i]] for i in rows]] if len(rows) else np.zeros((0, feats.shape[1] or 1), np.float32)
    norms = np.linalg.norm(picked, axis=1, keepdims=True)
    return picked / np.maximum(norms, 1e-12), rows


def _load(storage, dataset_id, backbone_id, lacking, index, feats):
    """The matrix grown by the stored one and by the feature cache's files for ``lacking``; stored again when the
    cache added anything."""
    key = matrix_key(dataset_id, backbone_id)
    if storage.download(key):
        try:
            index, feats = _read_npz(storage.local(key).read_bytes())
        except (OSError, ValueError, KeyError) as exc:
            log.warning("refit features %s unreadable (%s): read again from the feature cache", key, exc)
    lacking = [s for s in lacking if s not in index]
    if not lacking:
        return index, feats
    cache = StoreFeatureCache(storage)
    try:
        if storage.remote:
            storage.download_many([cache.key(backbone_id, s, 0) for s in lacking])
        found = []
        for sha in lacking:
            f = cache.get(backbone_id, sha, 0)
            if f is not None:
                found.append((sha, f.numpy().reshape(-1)))
    finally:
        cache.close()
    if not found:
        return index, feats
    added = np.stack([f for _, f in found]).astype(np.float32)
    feats = added if not index else np.concatenate([feats, added])
    index = {**index, **{sha: len(index) + j for j, (sha, _) in enumerate(found)}}
    atomic_write_bytes(storage.local(key), _write_npz(index, feats))
    storage.upload(key)
    log.info("refit features %s: %d images added from the feature cache (%d in all)", key, len(found), len(index))
    return index, feats


def forget() -> None:
    """Drop this process's matrices (tests)."""
    with _lock:
        _memory.clear()
