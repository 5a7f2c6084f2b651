"""encode_images: eval + augmented views, on-disk cache keyed by (backbone, sha256, view), cancel, progress."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ml.features import FeatureCache, encode_images, sha256_bytes
from ml.train import TrainingCancelled


def _png(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_views_and_eval_transform(tiny_native, tmp_path):
    images = [_png(i) for i in range(5)]
    feats = encode_images(tiny_native, images, views=3, batch_size=4, seed=1)
    assert feats.shape == (3, 5, tiny_native.embed_dim) and feats.dtype == torch.float32
    pixels = torch.stack([tiny_native.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
    assert torch.allclose(feats[0], tiny_native.encode_image(pixels), atol=1e-5)  # view 0 = eval transform
    assert not torch.allclose(feats[1], feats[0]) and not torch.allclose(feats[1], feats[2])
    again = encode_images(tiny_native, images, views=3, batch_size=2, seed=1)
    assert torch.allclose(again, feats, atol=1e-5)  # augmentation is deterministic given (seed, sha, view)
    other = encode_images(tiny_native, images, views=2, seed=2)
    assert torch.allclose(other[0], feats[0], atol=1e-5) and not torch.allclose(other[1], feats[1])


def test_cache_means_nothing_is_read_or_encoded_twice(tiny_native, tmp_path):
    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.png"
        p.write_bytes(_png(10 + i))
        paths.append(p)
    shas = [sha256_bytes(p.read_bytes()) for p in paths]
    cache = FeatureCache(tmp_path / "cache")
    progress: list[tuple[int, int]] = []
    first = encode_images(
        tiny_native, paths, views=2, cache=cache, batch_size=4, on_progress=lambda d, t: progress.append((d, t))
    )
    assert progress[0] == (0, 12) and progress[-1] == (12, 12)
    for p in paths:
        p.unlink()  # a second job must not need the images at all
    progress.clear()
    second = encode_images(
        tiny_native, paths, shas=shas, views=2, cache=cache, on_progress=lambda d, t: progress.append((d, t))
    )
    assert progress == [(12, 12)]
    assert torch.equal(first, second)
    assert cache.path(tiny_native.id, shas[0], 0).is_file()


def test_cancel_between_batches(tiny_native):
    images = [_png(i) for i in range(4)]
    with pytest.raises(TrainingCancelled):
        encode_images(tiny_native, images, batch_size=2, should_cancel=lambda: True)


def test_bad_image_is_named(tiny_native):
    with pytest.raises(ValueError, match="item 1: cannot decode image"):
        encode_images(tiny_native, [_png(0), b"not an image"])


def test_a_decode_pool_gives_the_same_features_as_decoding_in_line(tiny_native, tmp_path):
    """Threads decoding the next batches while the model runs: the same features, in the same places, the cache
    written the same, progress counted the same."""
    images = [_png(40 + i, size=(40 + i, 30)) for i in range(11)]
    inline = encode_images(tiny_native, images, views=2, batch_size=3, seed=5, decode_workers=0)
    for workers in (1, 3):
        cache = FeatureCache(tmp_path / f"cache-{workers}")
        progress: list[tuple[int, int]] = []
        pooled = encode_images(
            tiny_native,
            images,
            views=2,
            batch_size=3,
            seed=5,
            decode_workers=workers,
            cache=cache,
            on_progress=lambda d, t, seen=progress: seen.append((d, t)),
        )
        assert torch.equal(pooled, inline)
        assert progress == [(0, 22), *[(min(k * 3, 22), 22) for k in range(1, 9)]]
        cached = encode_images(tiny_native, images, views=2, cache=cache, seed=5, decode_workers=workers)
        assert torch.equal(cached, inline)


def test_a_decode_pool_names_a_bad_image_and_stops_on_cancel(tiny_native):
    with pytest.raises(ValueError, match="item 4: cannot decode image"):
        encode_images(tiny_native, [_png(i) for i in range(4)] + [b"not an image"], batch_size=2, decode_workers=2)
    calls = []

    def cancel_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(TrainingCancelled):
        encode_images(
            tiny_native, [_png(i) for i in range(12)], batch_size=2, decode_workers=2, should_cancel=cancel_after_two
        )
    assert len(calls) == 3  # checked before each model call: two batches encoded, the third not
