"""Synthetic datasets for the live refit: rows, a model and its consolidated features in the store, no images.

``tagsift bench review --live`` times refits on them at 10,000 and 100,000 items, and the tests use small ones:
the refit reads features only, so an item needs no image (its sha256 is random).
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass

import numpy as np
from sqlalchemy import insert

from app.db import session_scope
from app.models import Dataset, Item, Model, Owner, new_id, utcnow
from app.storage import BlobStore, get_storage

BACKBONE_ID = "synthetic-features"


@dataclass
class SyntheticDataset:
    owner_id: str
    dataset_id: str
    model_id: str
    item_ids: list[str]
    truth: np.ndarray  # (N,) true class index
    candidates: list[list[str]]
    classes: list[str]


def _features(n: int, k: int, d: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(0, k, size=n)
    feats = centres[truth] + noise * rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), truth, centres


def head_npz(class_features: np.ndarray, logit_scale: float, bias: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    b = np.zeros(len(class_features), np.float32) if bias is None else bias.astype(np.float32)
    np.savez(buf, class_features=class_features.astype(np.float32), bias=b, logit_scale=np.float32(logit_scale))
    return buf.getvalue()


def make_synthetic(
    n: int,
    *,
    k: int = 10,
    d: int = 64,
    q: float = 0.3,
    noise: float = 1.6,
    blur: float = 2.0,
    seed: int = 0,
    storage: BlobStore | None = None,
    with_features: bool = True,
) -> SyntheticDataset:
    """An owner, a dataset of ``n`` items with candidate sets at rate ``q`` (true tag always in), a model whose head
    is the class centres blurred (labels about right), the items labelled by it, and the features in the store."""
    from worker.refit_features import _write_npz, matrix_key

    storage = storage or get_storage()
    rng = np.random.default_rng(seed)
    feats, truth, centres = _features(n, k, d, noise, rng)
    classes = [f"class{j}" for j in range(k)]
    mask = rng.random((n, k)) < q
    mask[np.arange(n), truth] = True
    blurred = centres + blur * rng.normal(size=centres.shape).astype(np.float32) / np.sqrt(d)
    blurred /= np.linalg.norm(blurred, axis=1, keepdims=True)
    scale = 10.0
    logits = scale * feats @ blurred.T
    logits[~mask] = -np.inf
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    order = np.sort(p, axis=1)
    labels, conf, margin = p.argmax(1), order[:, -1], order[:, -1] - order[:, -2]
    shas = [secrets.token_hex(32) for _ in range(n)]
    head_sha = storage.put(head_npz(blurred, scale))
    model_id, item_ids = new_id(), [new_id() for _ in range(n)]
    candidates = [[classes[j] for j in np.flatnonzero(mask[i])] for i in range(n)]
    with session_scope() as session:
        owner = Owner(name=f"live-{new_id()[:8]}")
        session.add(owner)
        session.flush()
        ds = Dataset(owner_id=owner.id, name="synthetic live", classes=classes, item_count=n)
        session.add(ds)
        session.flush()
        session.add(
            Model(
                id=model_id,
                owner_id=owner.id,
                dataset_id=ds.id,
                job_id=None,
                backbone=BACKBONE_ID,
                method="linear_probe",
                classes=classes,
                metrics={"backbone_id": BACKBONE_ID},
                artifacts={"head.npz": head_sha},
                created_at=utcnow(),
            )
        )
        now = utcnow()
        rows = [
            {
                "id": item_ids[i],
                "dataset_id": ds.id,
                "seq": i,
                "file": f"img{i}.jpg",
                "sha256": shas[i],
                "width": 32,
                "height": 32,
                "candidates": candidates[i],
                "label": classes[labels[i]],
                "confidence": float(conf[i]),
                "margin": float(margin[i]),
                "label_source": "model",
                "needs_review": bool(conf[i] < 0.9),
                "model_id": model_id,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(n)
        ]
        for start in range(0, n, 5000):
            session.execute(insert(Item), rows[start : start + 5000])
        owner_id, dataset_id = owner.id, ds.id
    if with_features:
        key = matrix_key(dataset_id, BACKBONE_ID)
        path = storage.local(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_write_npz({s: i for i, s in enumerate(shas)}, feats))
        storage.upload(key)
    return SyntheticDataset(owner_id, dataset_id, model_id, item_ids, truth, candidates, classes)
