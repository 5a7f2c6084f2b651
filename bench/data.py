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


# --- the confuser split (instance-dependent candidate sets) and the second dataset (scikit-learn's digits) -------

CONFUSER_PER_CLASS = 50  # CIFAR-10: train-split images outside every other split, with their true labels
CONFUSER_SEED = 20_011


def confuser_rows(train_labels: torch.Tensor, per_class: int = CONFUSER_PER_CLASS) -> torch.Tensor:
    """Rows of the CIFAR-10 train split for the model whose confusions draw instance-dependent candidate sets:
    disjoint from the few-shot draws of seeds 1-8, the large set and the validation split."""
    from ml.data import few_shot_indices

    taken = torch.zeros(len(train_labels), dtype=torch.bool)
    for s in RESERVED_SEEDS:
        taken[fewshot_rows(train_labels, s)] = True
    taken[large_rows(train_labels)] = True
    taken[val_rows(train_labels)] = True
    free = (~taken).nonzero().flatten()
    return free[few_shot_indices(train_labels[free], per_class, CONFUSER_SEED)]


DIGITS_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_TEMPLATE = "a photo of the digit {}."
DIGITS_SPLIT = {"test": 40, "val": 30, "confuser": 20}  # per class; the rest is the training pool (84-93 per class)
DIGITS_SEED = 7


def load_digits_set(size: int = 32):
    """scikit-learn's digits (1,797 8x8 scans, shipped with scikit-learn) as an ``ml.data.ImageSet``: each scan
    upscaled to ``size`` px (bicubic), dark ink on white, PNG bytes; class names are the digits' words."""
    import hashlib
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from ml.data import ImageSet

    d = load_digits()
    images = []
    for x in d.images:
        pixels = (255 - np.clip(x, 0, 16) * (255 / 16)).astype(np.uint8)
        im = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        images.append(buf.getvalue())
    return ImageSet(
        images=images,
        labels=torch.as_tensor(d.target, dtype=torch.long),
        shas=[hashlib.sha256(b).hexdigest() for b in images],
        classnames=DIGITS_CLASSES,
        names=[f"digits/{i}" for i in range(len(images))],
    )


def digits_splits(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Seeded, disjoint per-class splits of the digits: test, val, confuser and the training pool ("pool")."""
    g = torch.Generator().manual_seed(DIGITS_SEED)
    out: dict[str, list[int]] = {name: [] for name in (*DIGITS_SPLIT, "pool")}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c, as_tuple=True)[0]
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        start = 0
        for name, n in DIGITS_SPLIT.items():
            out[name] += idx[start : start + n]
            start += n
        out["pool"] += idx[start:]
    return {name: torch.tensor(sorted(rows), dtype=torch.long) for name, rows in out.items()}
