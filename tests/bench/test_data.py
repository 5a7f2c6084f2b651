"""CIFAR-10 JPEG loader and the few-shot + candidate-set protocol (method.md section 2)."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
import torch

from bench.data import CIFAR10_CLASSES, few_shot_indices, load_cifar10, partialize
from tests.ml.reference_fixtures import *  # noqa: F403 - pytest fixtures (cifar10_path)


def _labels(n_per_class: int = 30, k: int = 10) -> torch.Tensor:
    perm = torch.randperm(k * n_per_class, generator=torch.Generator().manual_seed(5))
    return torch.arange(k).repeat_interleave(n_per_class)[perm]


# ------------------------------------------------------------------------------------------------- few-shot
def test_few_shot_counts_per_class_and_determinism():
    labels = _labels()
    idx = few_shot_indices(labels, shots=4, seed=1)
    assert idx.dtype == torch.long and idx.shape == (40,)
    assert torch.equal(idx, torch.sort(idx).values) and idx.unique().numel() == 40
    assert torch.bincount(labels[idx], minlength=10).tolist() == [4] * 10
    assert torch.equal(idx, few_shot_indices(labels, shots=4, seed=1))
    assert not torch.equal(idx, few_shot_indices(labels, shots=4, seed=2))


def test_few_shot_takes_all_of_a_small_class():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 5)
    idx = few_shot_indices(labels, shots=4, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [4, 2, 4]
    with pytest.raises(ValueError):
        few_shot_indices(labels, shots=0, seed=0)


# ------------------------------------------------------------------------------------------------- partialize
def test_partialize_shape_true_label_and_determinism():
    labels = _labels()
    mask = partialize(labels, 10, q=0.3, seed=3)
    assert mask.dtype == torch.bool and mask.shape == (300, 10)
    assert mask[torch.arange(300), labels].all()
    assert torch.equal(mask, partialize(labels, 10, q=0.3, seed=3))
    assert not torch.equal(mask, partialize(labels, 10, q=0.3, seed=4))


@pytest.mark.parametrize("q", [0.0, 0.1, 0.3, 0.5, 0.7, 1.0])
def test_partialize_mean_set_size(q):
    k, n = 10, 20000
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(0))
    mask = partialize(labels, k, q=q, seed=11)
    mean = mask.sum(1).float().mean().item()
    expected = 1 + q * (k - 1)
    # std of the mean: sqrt((K-1) q (1-q) / n) <= 0.011; allow ~5 sigma
    assert abs(mean - expected) < 0.05, (mean, expected)
    # flips are uniform over the wrong labels (instance- and class-independent)
    off = mask.clone()
    off[torch.arange(n), labels] = False
    per_class = off.float().sum(0) / (n - torch.bincount(labels, minlength=k)).float()
    assert torch.allclose(per_class, torch.full((k,), q), atol=0.02)


def test_partialize_rejects_bad_input():
    with pytest.raises(ValueError):
        partialize(torch.tensor([0, 3]), 3, q=0.2, seed=0)
    with pytest.raises(ValueError):
        partialize(torch.tensor([0, 1]), 3, q=1.5, seed=0)


# ------------------------------------------------------------------------------------------------- loader
def _jpeg(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture()
def tiny_archive(tmp_path):
    """A CIFAR-shaped archive: 3 test and 5 train images for each of 3 classes, members in shuffled order."""
    members = []
    for split, n in (("train", 5), ("test", 3)):
        for c in CIFAR10_CLASSES[:3]:
            for i in range(n):
                members.append((f"{split}/{c}/{i:04d}.jpg", _jpeg((10 * i, 40 * len(c), 7 * len(split)))))
    members.sort(key=lambda m: hashlib.sha256(m[0].encode()).hexdigest())  # archive order != sorted order
    path = tmp_path / "tiny.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, dict(members)


def test_loader_on_synthetic_archive(tiny_archive):
    path, members = tiny_archive
    test = load_cifar10(path, "test")
    assert len(test) == 9 and test.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert test.names[0] == "test/airplane/0000.jpg"
    assert all(test.images[i] == members[n] for i, n in enumerate(test.names))
    assert test.shas == [hashlib.sha256(b).hexdigest() for b in test.images]
    assert test.classnames == CIFAR10_CLASSES
    sub = load_cifar10(path, "train", per_class=2, seed=0)
    assert torch.bincount(sub.labels).tolist() == [2, 2, 2]
    assert sub.names == load_cifar10(path, "train", per_class=2, seed=0).names
    seeds = {tuple(load_cifar10(path, "train", per_class=2, seed=s).names) for s in range(6)}
    assert len(seeds) > 1
    with pytest.raises(ValueError):
        load_cifar10(path, "val")
    with pytest.raises(FileNotFoundError, match="nope.tar.gz"):
        load_cifar10(path.parent / "nope.tar.gz")


def test_loader_on_real_archive(cifar10_path):
    test = load_cifar10(cifar10_path, "test", per_class=30, seed=0)
    assert len(test) == 300 and test.labels.shape == (300,)
    assert torch.bincount(test.labels, minlength=10).tolist() == [30] * 10
    assert len(set(test.shas)) == 300
    assert all(b[:2] == b"\xff\xd8" for b in test.images)  # JPEG magic
    from PIL import Image

    assert Image.open(io.BytesIO(test.images[0])).size == (32, 32)
    again = load_cifar10(cifar10_path, "test", per_class=30, seed=0)
    assert again.shas == test.shas
    # the protocol on real labels: 16 shots per class, candidate sets at q = 0.3
    idx = few_shot_indices(test.labels, shots=16, seed=1)
    assert torch.bincount(test.labels[idx], minlength=10).tolist() == [16] * 10
    cands = partialize(test.labels[idx], 10, q=0.3, seed=1)
    assert cands[torch.arange(160), test.labels[idx]].all()


def test_bench_setting_composes_the_protocol(tiny_archive):
    from bench.common import load_setting

    path, _ = tiny_archive
    s = load_setting(path, shots=2, q=0.5, seed=1)
    assert len(s.images) == 6 and s.candidates.shape == (6, 10)
    assert torch.bincount(s.images.labels).tolist() == [2, 2, 2]
    assert s.candidates[torch.arange(6), s.images.labels].all()
    again = load_setting(path, shots=2, q=0.5, seed=1)
    assert torch.equal(s.indices, again.indices) and torch.equal(s.candidates, again.candidates)
    assert 1.0 <= s.mean_set_size <= 10.0
