"""The similarity map of a finished job: its items' 2-D layout and nearest neighbours (``ml.layout``) from the
features the job cached, stored as one JSON blob; the job's metrics name it (``metrics["layout"]``), and the web
app (``app/web/map_pages.py``) reads it without importing torch or ml."""

from __future__ import annotations

import json
import logging

import numpy as np

from ml.layout import layout_2d, neighbours

log = logging.getLogger(__name__)

#: Neighbours kept per item ("similar to this item").
NEIGHBOURS = 12


def layout_blob(features: np.ndarray, item_ids: list[str]) -> bytes:
    """The map's JSON: ``{"version": 1, "method": ..., "items": [id...], "xy": [[x, y]...], "nn": [[i...]...]}``
    (``nn`` holds indexes into ``items``)."""
    xy = layout_2d(features)
    nn = neighbours(features, NEIGHBOURS)
    body = {
        "version": 1,
        "method": "pca",
        "items": item_ids,
        "xy": np.round(xy, 4).tolist(),
        "nn": nn.tolist(),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def store_layout(storage, features, item_ids: list[str]) -> dict | None:
    """Compute and store the map from the items' clean-view features (``(N, D)``, in ``item_ids``' order: the
    features the job encoded); the entry for the job's metrics, or None (logged) when it cannot be stored: the map
    is a view, a job never fails for it."""
    try:
        features = np.asarray(features.cpu() if hasattr(features, "cpu") else features, dtype=np.float32)
        if features.ndim != 2 or len(features) != len(item_ids):
            log.warning("similarity map: %s features for %d items", features.shape, len(item_ids))
            return None
        blob = storage.put(layout_blob(features, item_ids))
        return {"blob": blob, "items": len(item_ids), "method": "pca", "neighbours": NEIGHBOURS}
    except Exception as exc:  # the map is optional: the job's labels matter more
        log.warning("similarity map not stored: %s", exc)
        return None
