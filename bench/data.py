"""CIFAR-10 and the image sets of the benchmarks: loading, the few-shot and candidate-set protocol, the fixed splits of
`tagsift bench reproduce` and their cached features. (Only bench/ and the tests use it: nothing that ships does.)

The protocol (``shared/docs/method.md`` section 2):

* :func:`load_cifar10` reads ``cifar10-jpg.tar.gz`` (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``) once,
  sequentially, and keeps the JPEG bytes (never decoded here), labels and sha256s, in a fixed order (class, file
  name) that does not depend on the order of the archive's members.
* :func:`few_shot_indices`: K shots per class, seeded.
* :func:`partialize`: symmetric (uniform, instance-independent) candidate sets: every non-true label is added
  independently with probability q, the true label is always in; E|S| = 1 + q(K - 1). Seeded.

Every random choice uses its own ``torch.Generator`` seeded from the argument: results depend on the seed only,
never on global RNG state.

The fixed splits (all seeded, all disjoint from the test set):
* fewshot(seed): 16 images per class of the CIFAR-10 train split (:func:`few_shot_indices`, seed = run seed);
* val: 50 images per class of the train split, disjoint from the few-shot images of seeds 1-8 and from the large
  set; clean labels; used to choose the service default and the beyond-the-paper variants (never the test set);
* large: 500 images per class of the train split (seed 1, disjoint from val): the "real annotation project" regime;
* test: the full 10,000-image CIFAR-10 test split (view 0 only).
Training features: view 0 (eval transform) + FEWSHOT_AUG_VIEWS augmented views per few-shot image,
view 0 + LARGE_AUG_VIEWS
for the large set (ml.features: the cached views are the augmentation).
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS = ("train", "test")


@dataclass
class ImageSet:
    images: list[bytes]  # encoded image files (JPEG), in order
    labels: torch.Tensor  # (N,) long, index into classnames
    shas: list[str]  # sha256 hex of each image's bytes
    classnames: tuple[str, ...]
    names: list[str] = field(default_factory=list)  # archive member path of each image ("test/cat/0001.jpg")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: torch.Tensor | list[int]) -> ImageSet:
        """The items at ``indices``, in that order."""
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        return ImageSet(
            images=[self.images[i] for i in idx],
            labels=self.labels[torch.as_tensor(idx, dtype=torch.long)].clone(),
            shas=[self.shas[i] for i in idx],
            classnames=self.classnames,
            names=[self.names[i] for i in idx] if self.names else [],
        )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def load_cifar10(path: str | Path, split: str = "train", *, per_class: int | None = None, seed: int = 0) -> ImageSet:
    """Load one split of the CIFAR-10 JPEG archive at ``path``.

    ``per_class``: keep a seeded random subset of that many images per class (all when None or larger than
    the class). Items are ordered by class, then by file name. Raises FileNotFoundError naming the path when
    the archive is absent, ValueError on a bad split or an unexpected archive layout.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1 or None, got {per_class}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 JPEG archive not found at {path}")
    class_index = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    found: list[tuple[int, str, bytes]] = []
    with tarfile.open(path, "r:gz") as tar:  # one sequential pass
        for member in tar:
            if not member.isfile():
                continue
            parts = member.name.split("/")
            if parts and parts[0] in (".", ""):
                parts = parts[1:]
            if len(parts) != 3 or parts[0] != split or not parts[2].lower().endswith((".jpg", ".jpeg")):
                continue
            if parts[1] not in class_index:
                raise ValueError(f"{path}: unexpected class folder {parts[1]!r} in member {member.name!r}")
            f = tar.extractfile(member)
            if f is None:
                continue
            found.append((class_index[parts[1]], "/".join(parts), f.read()))
    if not found:
        raise ValueError(f"{path}: no {split}/<class>/*.jpg members found")
    found.sort(key=lambda t: (t[0], t[1]))

    if per_class is not None:
        g = _generator(seed)
        keep: list[tuple[int, str, bytes]] = []
        for c in range(len(CIFAR10_CLASSES)):
            items = [t for t in found if t[0] == c]
            if len(items) > per_class:
                pick = sorted(torch.randperm(len(items), generator=g)[:per_class].tolist())
                items = [items[i] for i in pick]
            keep.extend(items)
        found = keep

    return ImageSet(
        images=[t[2] for t in found],
        labels=torch.tensor([t[0] for t in found], dtype=torch.long),
        shas=[hashlib.sha256(t[2]).hexdigest() for t in found],
        classnames=CIFAR10_CLASSES,
        names=[t[1] for t in found],
    )


def few_shot_indices(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Indices of ``shots`` items per class (all of a class that has fewer), seeded; sorted ascending.

    Classes are the distinct values present in ``labels``; the draw for each class depends only on the seed,
    the class and the positions of its items.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    g = _generator(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c, as_tuple=True)[0]
        perm = torch.randperm(idx.numel(), generator=g)[:shots]
        chosen.append(idx[perm])
    if not chosen:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(torch.cat(chosen)).values


def partialize(labels: torch.Tensor, num_classes: int, q: float, seed: int) -> torch.Tensor:
    """(N, K) bool candidate sets by symmetric flipping (method.md 2.2).

    ``Y[i, j] = 1[u_ij < q]`` for j != y_i and ``Y[i, y_i] = 1``, with u ~ U(0, 1) from a generator seeded by
    ``seed``. Nothing forces |S| >= 2 (as in the reference code). E|S| = 1 + q (K - 1).
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    u = torch.rand(labels.numel(), num_classes, generator=_generator(seed))
    mask = u < q
    mask[torch.arange(labels.numel()), labels] = True
    return mask


def partialize_instance(labels: torch.Tensor, confusion: torch.Tensor, q: float, seed: int) -> torch.Tensor:
    """(N, K) bool instance-dependent candidate sets: tags that are easy to confuse with the true one join more often.

    ``confusion`` (N, K) is each item's class posterior from a model trained on other items (docs/results.md, the
    instance-dependent protocol). Wrong tag j of item i joins with probability P_ij = min(1, λ_i w_ij), where w_i is
    the posterior over the wrong tags (renormalised, + 1e-6 so that every tag can join) and λ_i is chosen so that
    Σ_j P_ij = q (K - 1): the same expected set size as :func:`partialize` at rate q, spread by confusability
    instead of uniformly. The true tag is always in. Seeded like :func:`partialize`.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    n, k = confusion.shape
    if labels.shape != (n,):
        raise ValueError(f"labels: shape {tuple(labels.shape)} != ({n},)")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    rows = torch.arange(n)
    w = confusion.float().clamp_min(0) + 1e-6
    w[rows, labels] = 0.0
    w = w / w.sum(dim=1, keepdim=True)
    target = q * (k - 1)
    lo, hi = torch.zeros(n), torch.full((n,), float(k) / 1e-9)
    for _ in range(100):  # bisection for λ_i: Σ_j min(1, λ w_ij) is increasing in λ
        mid = (lo + hi) / 2
        over = (mid[:, None] * w).clamp(max=1.0).sum(dim=1) > target
        hi = torch.where(over, mid, hi)
        lo = torch.where(over, lo, mid)
    p = (lo[:, None] * w).clamp(max=1.0)
    mask = torch.rand(n, k, generator=_generator(seed)) < p
    mask[rows, labels] = True
    return mask


# --- the fixed splits of `tagsift bench reproduce` ------------------------------------------------------------

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
    return few_shot_indices(train_labels, shots, seed)


def val_rows(train_labels: torch.Tensor, per_class: int = VAL_PER_CLASS) -> torch.Tensor:
    """50/class from the train split outside every reserved few-shot draw and outside the large set."""
    taken = torch.zeros(len(train_labels), dtype=torch.bool)
    for s in RESERVED_SEEDS:
        taken[fewshot_rows(train_labels, s)] = True
    taken[large_rows(train_labels)] = True
    free = (~taken).nonzero().flatten()
    return free[few_shot_indices(train_labels[free], per_class, VAL_SEED)]


def large_rows(train_labels: torch.Tensor, per_class: int = LARGE_PER_CLASS) -> torch.Tensor:
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
    """scikit-learn's digits (1,797 8x8 scans, shipped with scikit-learn) as an :class:`ImageSet`: each scan
    upscaled to ``size`` px (bicubic), dark ink on white, PNG bytes; class names are the digits' words."""
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

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
