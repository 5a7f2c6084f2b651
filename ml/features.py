"""Frozen image features, computed once per (backbone, image, view) and cached on disk.

Training never runs the image encoder: `encode_images` returns a (V, N, D) tensor and `ml.train.fit` samples one
cached view per item per step. View 0 is the deterministic eval transform; views 1..V-1 are augmented
(RandomResizedCrop(scale 0.08-1) + horizontal flip), each deterministic given (seed, image sha256, view). With
augmentation on, *the set of V cached views is the augmentation*: this is how the features are computed once.
Cache layout: <root>/<backbone>/<sha[:2]>/<sha>_v<view>[_s<seed>].npy (augmented views also key on the seed).
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.backbone import Backbone, PreprocessConfig
from ml.errors import TrainingCancelled
from ml.files import atomic_path

_AUG_SCALE = (0.08, 1.0)  # RandomResizedCrop area range (torchvision / Dassl default)
_AUG_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of raw image bytes: the identity of an image in the cache."""
    return hashlib.sha256(data).hexdigest()


class FeatureCache:
    """On-disk cache of float32 feature vectors keyed by (backbone id, image sha256, view)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @staticmethod
    def _backbone_dir(backbone_id: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone_id)[:80]
        return f"{safe}-{hashlib.sha256(backbone_id.encode()).hexdigest()[:12]}"

    def path(self, backbone_id: str, sha: str, view: int, seed: int = 0) -> Path:
        name = f"{sha}_v{view}.npy" if view == 0 else f"{sha}_v{view}_s{seed}.npy"
        return self.root / self._backbone_dir(backbone_id) / sha[:2] / name

    def get(self, backbone_id: str, sha: str, view: int, seed: int = 0) -> torch.Tensor | None:
        p = self.path(backbone_id, sha, view, seed)
        if not p.is_file():
            return None
        try:
            return torch.from_numpy(np.load(p))
        except (OSError, ValueError):  # a torn or corrupt file is a miss, it gets rewritten
            return None

    def put(self, backbone_id: str, sha: str, view: int, feature: torch.Tensor, seed: int = 0) -> None:
        p = self.path(backbone_id, sha, view, seed)
        with atomic_path(p) as tmp, open(tmp, "wb") as f:  # readers never see a partial file
            np.save(f, feature.detach().cpu().float().numpy())


def _read(image: str | Path | bytes) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def draft_size(size: tuple[int, int], image_size: int, augmented: bool) -> tuple[int, int] | None:
    """The smallest (w, h) a JPEG may be decoded to (``Image.draft``) and still give the model ``image_size``
    pixels on the short side of what it is cropped to: the image's short side for the eval transform; for augmented
    views the smallest crop RandomResizedCrop can draw (area 0.08, aspect 3/4: short side sqrt(0.06 w h)) or its
    fallback's (the short side), whichever is smaller. None when no JPEG scale (1/2, 1/4, 1/8) fits: decoded in full."""
    w, h = size
    short = min(w, h)
    if augmented:
        short = min(short, math.sqrt(_AUG_SCALE[0] * _AUG_RATIO[0] * w * h))
    f = image_size / max(short, 1)
    if f > 0.5:
        return None
    return math.ceil(w * f - 1e-9), math.ceil(h * f - 1e-9)  # 1e-9: float error must not add a pixel


def _decode(data: bytes, image_size: int | None = None, augmented: bool = False) -> tuple[Image.Image, tuple]:
    """(RGB image, the file's own (w, h)); with ``image_size``, a JPEG is decoded at the smallest DCT scale that
    :func:`draft_size` allows (several times faster on large photos; scale 1, i.e. small images, is untouched)."""
    with Image.open(io.BytesIO(data)) as im:
        full = im.size
        target = draft_size(full, image_size, augmented) if image_size else None
        if target is not None:
            im.draft("RGB", target)  # a no-op for formats other than JPEG
        return im.convert("RGB"), full


def _pil_filter(name: str) -> int:
    return {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}[
        name
    ]


def _to_tensor(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S]
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1)
    return (x - mean) / std


def augment(
    img: Image.Image, cfg: PreprocessConfig, rng: random.Random, full_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """RandomResizedCrop(image_size, scale 0.08-1, ratio 3/4-4/3) + horizontal flip(p 0.5), drawn from `rng`.

    ``full_size``: the image's size in its file when ``img`` was decoded smaller (JPEG draft): the crop is drawn in
    the file's pixels, as without the draft, and taken from ``img`` scaled to its size."""
    w, h = full_size or img.size
    area = w * h
    box = None
    for _ in range(10):
        target = area * rng.uniform(*_AUG_SCALE)
        aspect = math.exp(rng.uniform(math.log(_AUG_RATIO[0]), math.log(_AUG_RATIO[1])))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            box = (left, top, left + cw, top + ch)
            break
    if box is None:  # fallback: the whole image centre-cropped to a valid ratio (torchvision behaviour)
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    size, resample = (cfg.image_size, cfg.image_size), _pil_filter(cfg.interpolation)
    if img.size == (w, h):
        out = img.crop(box).resize(size, resample)
    else:
        sx, sy = img.size[0] / w, img.size[1] / h
        out = img.resize(size, resample, box=(box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy))
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return _to_tensor(out, cfg)


def _view_pixels(backbone: Backbone, decoded: tuple, sha: str, view: int, seed: int) -> torch.Tensor:
    img, full = decoded
    if view == 0:
        return backbone.preprocess(img)
    return augment(img, backbone.preprocess_cfg, random.Random(f"{seed}:{sha}:{view}"), full)


def _pixels(backbone: Backbone, images, sha_list, chunk: list[tuple[int, int]], seed: int, names=None, draft=True):
    """Read, decode and preprocess one batch of (item, view) pairs: the (b, 3, S, S) input of one model call.

    An image is decoded once for its eval view and once for its augmented ones, each at its own draft scale
    (:func:`draft_size`), so a view's pixels never depend on which other views share its batch."""
    decoded: dict[tuple[int, bool], tuple] = {}
    pixels = []
    for i, v in chunk:
        key = (i, v > 0)
        if key not in decoded:
            data = _read(images[i])
            try:
                decoded[key] = _decode(data, backbone.preprocess_cfg.image_size if draft else None, v > 0)
            except Exception as e:  # any decoder error: name the item
                name = names[i] if names is not None else f"item {i}"
                raise ValueError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
        pixels.append(_view_pixels(backbone, decoded[key], sha_list[i], v, seed))
    return torch.stack(pixels)


def _prepared(prepare: Callable[[list], torch.Tensor], chunks: list[list], workers: int) -> Iterator:
    """(chunk, pixels) in order. ``workers`` > 0: a pool of that many threads prepares the next ``workers + 1``
    batches while the caller runs the model on this one (Pillow and torch release the GIL while they decode, resize
    and normalise), so decoding overlaps the model instead of adding to it; 0: each batch in the caller's thread."""
    if workers <= 0:
        for chunk in chunks:
            yield chunk, prepare(chunk)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    try:
        upcoming = iter(chunks)
        ahead = deque((c, pool.submit(prepare, c)) for c in islice(upcoming, workers + 1))
        while ahead:
            chunk, future = ahead.popleft()
            following = next(upcoming, None)
            if following is not None:
                ahead.append((following, pool.submit(prepare, following)))
            yield chunk, future.result()
    finally:  # a cancel or an error: batches not started are dropped, at most `workers` finish in the background
        pool.shutdown(wait=False, cancel_futures=True)


def encode_images(
    backbone: Backbone,
    images: Sequence[str | Path | bytes],
    *,
    shas: Sequence[str] | None = None,
    views: int = 1,
    cache: FeatureCache | None = None,
    batch_size: int = 64,
    seed: int = 0,
    decode_workers: int = 0,
    names: Sequence[str] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    draft: bool = True,
) -> torch.Tensor:
    """(views, N, D) float32 CPU image features, NOT normalised (see module doc for views and caching).

    Images whose every requested view is cached are neither read (when `shas` is given), decoded nor encoded.
    `decode_workers` threads read, decode and preprocess the next batches while the model runs (0: in this thread);
    the features are the same either way. An image that cannot be decoded is a ValueError naming it (`names[i]`,
    default "item i"). `should_cancel()` True -> `TrainingCancelled` between batches; `on_progress(done, total)`
    counts views. ``draft`` False: every JPEG decoded in full (the rate before draft decoding, for benchmarks).
    """
    assert views >= 1, f"views must be >= 1, got {views}"
    assert batch_size >= 1, f"batch_size must be >= 1, got {batch_size}"
    n = len(images)
    if shas is not None and len(shas) != n:
        raise ValueError(f"shas has {len(shas)} entries for {n} images")
    total = n * views
    out = torch.zeros(views, n, backbone.embed_dim)
    # hashing reads each file once; bytes are not kept (a path is read again only if it must be encoded)
    sha_list = list(shas) if shas is not None else [sha256_bytes(_read(im)) for im in images]

    pending: list[tuple[int, int]] = []  # (item, view) pairs still to encode
    for i, sha in enumerate(sha_list):
        for v in range(views):
            hit = cache.get(backbone.id, sha, v, seed) if cache is not None else None
            if hit is not None and hit.numel() == backbone.embed_dim:
                out[v, i] = hit
            else:
                pending.append((i, v))
    done = total - len(pending)
    if on_progress is not None:
        on_progress(done, total)

    chunks = [pending[start : start + batch_size] for start in range(0, len(pending), batch_size)]
    batches = _prepared(
        lambda chunk: _pixels(backbone, images, sha_list, chunk, seed, names, draft), chunks, decode_workers
    )
    try:
        for chunk, pixels in batches:
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled("image encoding cancelled")
            feats = backbone.encode_image(pixels).cpu()  # [b, D]
            for (i, v), f in zip(chunk, feats, strict=True):
                out[v, i] = f
                if cache is not None:
                    cache.put(backbone.id, sha_list[i], v, f, seed)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
    finally:
        batches.close()
    return out
