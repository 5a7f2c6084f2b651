"""Thumbnails for the review grid: the stored image shrunk to fit a square (JPEG), kept in a small in-process LRU.

The content never changes for a (sha256, size) pair, so the response carries a strong ETag and a year's max-age."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image, ImageOps

from app.storage import BlobStore

#: Sizes the web app asks for (grid and focused view); anything else is refused, so the cache stays bounded.
SIZES = (96, 160, 320)
_MAX_ENTRIES = 4096
_cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
_lock = threading.Lock()


def cached(sha256: str, size: int) -> bytes | None:
    """The thumbnail if this process made it already (no I/O: safe on the event loop)."""
    with _lock:
        data = _cache.get((sha256, size))
        if data is not None:
            _cache.move_to_end((sha256, size))
        return data


def thumbnail(*, storage: BlobStore, sha256: str, size: int) -> bytes:
    """JPEG bytes of the blob ``sha256`` fitted into ``size`` x ``size`` (never enlarged)."""
    key = (sha256, size)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    with Image.open(io.BytesIO(storage.get(sha256))) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
        img = ImageOps.exif_transpose(img).convert("RGB")
        img.thumbnail((size, size), Image.Resampling.BILINEAR)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
    data = out.getvalue()
    with _lock:
        _cache[key] = data
        while len(_cache) > _MAX_ENTRIES:
            _cache.popitem(last=False)
    return data
