"""CIFAR-10 (JPEG archive) and the few-shot + candidate-set protocol of ``shared/docs/method.md`` section 2.

* :func:`load_cifar10` reads ``cifar10-jpg.tar.gz`` (``train/<class>/NNNN.jpg``, ``test/<class>/NNNN.jpg``) once,
  sequentially, and keeps the JPEG bytes (never decoded here), labels and sha256s, in a fixed order (class, file
  name) that does not depend on the order of the archive's members.
* :func:`few_shot_indices`: K shots per class, seeded.
* :func:`partialize`: symmetric (uniform, instance-independent) candidate sets: every non-true label is added
  independently with probability q, the true label is always in; E|S| = 1 + q(K - 1). Seeded.

Every random choice uses its own ``torch.Generator`` seeded from the argument: results depend on the seed only,
never on global RNG state.
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
