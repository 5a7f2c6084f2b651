"""Benchmark helpers: one (shots, q, seed) CIFAR-10 setting of the protocol, and the encoded test split.

The protocol (``shared/docs/method.md`` 2.2): K shots per class from the train split (seeded), then candidate
sets generated once on that few-shot subset by symmetric flipping with probability q (seeded), true label
always in; the test split is clean. Everything here is pure ``ml`` (no app/worker imports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data import ImageSet, few_shot_indices, load_cifar10, partialize


@dataclass
class PLLSetting:
    shots: int
    q: float
    seed: int
    images: ImageSet  # the few-shot training images (true labels in images.labels, for logging/metrics only)
    indices: torch.Tensor  # (N,) rows of the full train split
    candidates: torch.Tensor  # (N, K) bool candidate sets

    @property
    def mean_set_size(self) -> float:
        return float(self.candidates.sum(1).float().mean())


def make_setting(train: ImageSet, shots: int, q: float, seed: int) -> PLLSetting:
    """The few-shot subset of ``train`` and its candidate sets for one (shots, q, seed)."""
    rows = few_shot_indices(train.labels, shots, seed)
    subset = train.subset(rows)
    cands = partialize(subset.labels, len(train.classnames), q, seed)
    return PLLSetting(shots=shots, q=q, seed=seed, images=subset, indices=rows, candidates=cands)


def load_setting(cifar10_path: str | Path, shots: int, q: float, seed: int) -> PLLSetting:
    """Read the train split once and build one setting (use :func:`make_setting` to build several)."""
    return make_setting(load_cifar10(cifar10_path, "train"), shots, q, seed)


def encode_test_split(
    backbone,
    cifar10_path: str | Path,
    feature_cache_dir: str | Path,
    *,
    per_class: int | None = None,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) unnormalised, labels (N,)) of the CIFAR-10 test split (all 10,000 when per_class is None),
    view 0 only, through the on-disk FeatureCache: encoded once per backbone, read back afterwards."""
    from ml.features import FeatureCache, encode_images

    test = load_cifar10(cifar10_path, "test", per_class=per_class, seed=seed)
    feats = encode_images(
        backbone, test.images, shas=test.shas, views=1, cache=FeatureCache(feature_cache_dir), on_progress=on_progress
    )
    return feats[0], test.labels
