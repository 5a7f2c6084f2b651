"""ml/layout.py: the similarity map's 2-D layout keeps clusters apart, and the neighbours are the true nearest."""

from __future__ import annotations

import numpy as np

from ml.layout import layout_2d, neighbours


def _clusters(per: int = 40, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 3
    labels = np.repeat(np.arange(3), per)
    return centres[labels] + rng.normal(size=(3 * per, dim)) * 0.3, labels


def test_layout_keeps_clusters_apart() -> None:
    x, labels = _clusters()
    xy = layout_2d(x)
    assert xy.shape == (len(x), 2) and np.abs(xy).max() <= 1.0 + 1e-6
    means = np.stack([xy[labels == k].mean(axis=0) for k in range(3)])
    spread = max(np.linalg.norm(xy[labels == k] - means[k], axis=1).max() for k in range(3))
    gaps = [np.linalg.norm(means[a] - means[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread  # every cluster is a separate blob on the map


def test_neighbours_are_the_nearest_by_cosine() -> None:
    x, labels = _clusters(per=20, seed=1)
    nn = neighbours(x, k=5, block=7)  # blocks smaller than the data: the block edges are exercised
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    truth = np.argsort(-sims, axis=1)[:, :5]
    assert (nn == truth).all()
    assert (labels[nn] == labels[:, None]).all()  # in a clustered set: the same cluster
    assert neighbours(x[:1], k=5).shape == (1, 0) and layout_2d(x[:0]).shape == (0, 2)
