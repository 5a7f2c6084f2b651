"""Images to predict, decoded lazily, once per content, within a per-request memory budget.

``POST /predict`` and the Label Studio backend's ``/predict`` used to decode every image of a request before the
model ran, one decoded image per task: a 105 KB PNG of 6000x6000 pixels decodes to 137 MB, so eight tasks pointing at
it held ~1 GB. Here each distinct image (by content, or by a key the caller knows identifies its content: an item's
sha256) is read, decoded and reduced to the model's input (3 x S x S floats) one at a time, and the full-size
pixels are freed before the next image is decoded. A request therefore holds at most one decoded image plus one
batch of model inputs (``TAGSIFT_PREDICT_BATCH_SIZE`` x 3 x S x S x 4 bytes).

The budget, ``TAGSIFT_PREDICT_MEMORY_BYTES``: the most bytes one image may take decoded (Pillow keeps 4 bytes per
pixel for RGB and RGBA, 1 for L and P; a mode other than RGB is converted, which holds a second, RGB copy). An image
over it is refused with a 422 naming the image and the setting, before its pixels are decoded (from the header).
The default, 320 MiB, admits every image within ``TAGSIFT_MAX_IMAGE_PIXELS`` (40 M pixels, RGBA: 305 MiB).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.config import Settings
from app.imaging import ImageInvalid, decode_image, preprocess
from app.predictor import LoadedModel

_ONE_BYTE = {"1", "L", "P"}
_TWO_BYTES = {"I;16", "I;16B", "I;16L", "I;16N", "LA", "La", "PA"}


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Memory to decode an image and convert it to RGB (the second copy only when its mode is not RGB)."""
    per_pixel = 1 if mode in _ONE_BYTE else 2 if mode in _TWO_BYTES else 4
    if mode != "RGB":
        per_pixel += 4
    return width * height * per_pixel


def check_budget(data: bytes, budget: int) -> None:
    """:class:`ImageInvalid` when ``data`` would decode to more than ``budget`` bytes (read from the header only)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, mode = img.width, img.height, img.mode
    except Exception:  # not an image, or a broken header: decode_image says what exactly
        return
    need = decoded_bytes(width, height, mode)
    if need > budget:
        raise ImageInvalid(
            f"the image ({width}x{height} {mode}) needs {need} bytes decoded, over the request's memory budget of"
            f" {budget} (TAGSIFT_PREDICT_MEMORY_BYTES)"
        )


def to_input(data: bytes, loaded: LoadedModel, settings: Settings) -> np.ndarray:
    """The model input (3, S, S) of one image: checked against the budget, decoded, reduced, the pixels freed."""
    check_budget(data, settings.predict_memory_bytes)
    img = decode_image(data, max_pixels=settings.max_image_pixels, max_bytes=settings.max_image_bytes)
    try:
        return preprocess(img, loaded.preprocess)
    finally:
        img.close()


@dataclass
class Source:
    """One image of a request: ``key`` identifies its content (None: hash the bytes), ``load`` reads its bytes."""

    key: str | None
    load: Callable[[], bytes]


def content_key(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def logits_of(
    loaded: LoadedModel, sources: Iterable[Source], settings: Settings, *, catch: tuple[type[Exception], ...] = ()
) -> tuple[list[np.ndarray | None], list[tuple[int, Exception]]]:
    """The logits row of each source (None where it failed) and the failures ``(index, exception)``.

    Sources with the same key are read and decoded once; bytes are read when their turn comes; each image is
    decoded and reduced to the model input before the next is read. ``ImageInvalid`` and ``catch`` are failures.
    """
    sources = list(sources)
    rows: list[np.ndarray | None] = [None] * len(sources)
    failures: list[tuple[int, Exception]] = []
    done: dict[str, np.ndarray | Exception] = {}  # content key -> its row, or why it failed
    waiting: dict[str, list[int]] = {}  # content key -> the sources waiting for its row (its batch is pending)
    pending: list[tuple[str, np.ndarray]] = []  # one batch of model inputs
    size = max(1, settings.predict_batch_size)

    def reuse(key: str, i: int) -> bool:
        if key in done:
            value = done[key]
            if isinstance(value, Exception):
                failures.append((i, value))
            else:
                rows[i] = value
            return True
        if key in waiting:
            waiting[key].append(i)
            return True
        return False

    def flush() -> None:
        if pending:
            result = loaded.run(np.stack([x for _, x in pending]))
            for (key, _), row in zip(pending, result, strict=True):
                done[key] = row
                for j in waiting.pop(key):
                    rows[j] = row
            pending.clear()

    for i, src in enumerate(sources):
        if src.key is not None and reuse(src.key, i):
            continue
        key = src.key
        data: bytes | None = None
        try:
            data = src.load()
            key = key or content_key(data)
            if src.key is None and reuse(key, i):
                continue
            x = to_input(data, loaded, settings)
        except (ImageInvalid, *catch) as exc:
            failures.append((i, exc))
            if key is not None:
                done[key] = exc
            continue
        finally:
            data = None  # the compressed bytes go too: only model inputs stay
        waiting[key] = [i]
        pending.append((key, x))
        if len(pending) >= size:
            flush()
    flush()
    return rows, failures
