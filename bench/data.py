"""The fixed CIFAR-10 image sets of `tagsift bench reproduce` and their cached features.

Splits (all seeded, all disjoint from the test set):
* fewshot(seed): 16 images per class of the CIFAR-10 train split (ml.data.few_shot_indices, seed = run seed);
* val: 50 images per class of the train split, disjoint from the few-shot images of seeds 1-8 and from the large
  set; clean labels; used to choose the service default and the beyond-the-paper variants (never the test set);
* large: 500 images per class of the train split (seed 1, disjoint from val): the "real annotation project" regime;
* test: the full 10,000-image CIFAR-10 test split (view 0 only).
Training features: view 0 (eval transform) + FEWSHOT_AUG_VIEWS augmented views per few-shot image,
view 0 + LARGE_AUG_VIEWS
for the large set (ml.features: the cached views are the augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FEWSHOT_SHOTS = 16
FEWSHOT_AUG_VIEWS = 2  # + view 0 -> 3 cached views per few-shot image (CPU budget)
VAL_PER_CLASS = 50
VAL_SEED = 10_007
LARGE_PER_CLASS = 500
LARGE_SEED = 1
LARGE_AUG_VIEWS = 0
AUG_SEED = 0  # encode_images seed of the augmented views
RESERVED_SEEDS = tuple(range(1, 9))  # few-shot seeds whose images val avoids


@dataclass
class Split:
    features: torch.Tensor  # (V, N, D) unnormalised, CPU
    labels: torch.Tensor  # (N,) long, true labels
    indices: torch.Tensor  # (N,) rows of the CIFAR-10 split


def fewshot_rows(train_labels: torch.Tensor, seed: int, shots: int = FEWSHOT_SHOTS) -> torch.Tensor:
    from ml.data import few_shot_indices

    return few_shot_indices(train_labels, shots, seed)


def val_rows(train_labels: torch.Tensor, per_class: int = VAL_PER_CLASS) -> torch.Tensor:
    """50/class from the train split outside every reserved few-shot draw and outside the large set."""
    from ml.data import few_shot_indices

    taken = torch.zeros(len(train_labels), dtype=torch.bool)
    for s in RESERVED_SEEDS:
        taken[fewshot_rows(train_labels, s)] = True
    taken[large_rows(train_labels)] = True
    free = (~taken).nonzero().flatten()
    return free[few_shot_indices(train_labels[free], per_class, VAL_SEED)]


def large_rows(train_labels: torch.Tensor, per_class: int = LARGE_PER_CLASS) -> torch.Tensor:
    from ml.data import few_shot_indices

    return few_shot_indices(train_labels, per_class, LARGE_SEED)


def encode_rows(backbone, image_set, rows: torch.Tensor, views: int, cache_dir: str | Path, log=None) -> Split:
    """Features of image_set[rows] (views: 1 = view 0 only), through the on-disk FeatureCache."""
    from ml.features import FeatureCache, encode_images

    rows = torch.as_tensor(rows, dtype=torch.long)
    idx = rows.tolist()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        import time

        if log is not None and (time.time() - last[0] > 30 or done == total):
            last[0] = time.time()
            log(f"  encoded {done}/{total}")

    feats = encode_images(
        backbone,
        [image_set.images[i] for i in idx],
        shas=[image_set.shas[i] for i in idx],
        views=views,
        cache=FeatureCache(cache_dir),
        seed=AUG_SEED,
        on_progress=progress,
    )
    return Split(feats, image_set.labels[rows].clone(), rows)


def test_order(n: int) -> torch.Tensor:
    """Seeded permutation of the test rows: the encoding order, so that any encoded prefix is a uniform subset."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))
