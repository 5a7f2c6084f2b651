"""A 2-D map of a job's items from their image features, and each item's nearest neighbours (the web app's
similarity map and "similar to this item").

The features are L2-normalised, centred and projected on their first ``pca_dims`` principal components (an SVD of
the centred matrix, at most 50 dimensions); the map's two axes are then the first two of those components, scaled so
that the points fill [-1, 1]. Neighbours are by cosine similarity in the full feature space, computed in blocks so
that 10,000 items need no 10,000 x 10,000 matrix at once. numpy only (the worker passes the cached features)."""

from __future__ import annotations

import numpy as np


def _normalise(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features: expected a 2-D array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pca(features: np.ndarray, dims: int = 50) -> np.ndarray:
    """The features (L2-normalised, centred) on their first ``dims`` principal components, strongest first."""
    x = _normalise(features)
    x = x - x.mean(axis=0, keepdims=True)
    dims = max(1, min(dims, x.shape[0], x.shape[1]))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def layout_2d(features: np.ndarray, pca_dims: int = 50) -> np.ndarray:
    """(n, 2) float32 coordinates in [-1, 1] (see the module docstring); n = 1 or 2 items give points on a line."""
    n = len(features)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    z = pca(features, pca_dims)
    if z.shape[1] < 2:
        z = np.concatenate([z, np.zeros((n, 2 - z.shape[1]), dtype=z.dtype)], axis=1)
    xy = z[:, :2]
    scale = np.abs(xy).max(axis=0)
    return (xy / np.where(scale > 0, scale, 1.0)).astype(np.float32)


def neighbours(features: np.ndarray, k: int = 12, block: int = 1024) -> np.ndarray:
    """(n, min(k, n - 1)) int32: each item's most similar other items by cosine similarity, most similar first."""
    x = _normalise(features)
    n = len(x)
    k = max(0, min(k, n - 1))
    out = np.zeros((n, k), dtype=np.int32)
    if k == 0:
        return out
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf  # never an item itself
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + block] = np.take_along_axis(top, order, axis=1)
    return out
