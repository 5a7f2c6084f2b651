"""Content-addressed blob storage (images, model artifacts) behind one small interface.

Callers only see :class:`BlobStore`; :class:`LocalBlobStore` keeps blobs under ``<data_dir>/blobs/ab/cd/<sha256>``.
An object-store backend implements the same five methods and is returned by :func:`get_storage`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from app.config import get_settings


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_sha(sha: str) -> str:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"not a sha256 hex digest: {sha[:80]!r}")
    return sha


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its sha256."""

    def get(self, sha: str) -> bytes:
        """The bytes of blob ``sha``; ``FileNotFoundError`` if absent."""

    def open(self, sha: str) -> BinaryIO:
        """A readable binary stream of blob ``sha``."""

    def exists(self, sha: str) -> bool: ...

    def delete(self, sha: str) -> None:
        """Remove blob ``sha`` if present."""

    def local_path(self, sha: str) -> Path:
        """A local file holding blob ``sha`` (for libraries that need a path, e.g. ONNX Runtime)."""


class LocalBlobStore:
    """Blobs as files under ``root``, written atomically (temp file + rename), never overwritten."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, sha: str) -> Path:
        _check_sha(sha)
        return self.root / sha[:2] / sha[2:4] / sha

    def put(self, data: bytes) -> str:
        sha = sha256_hex(data)
        path = self._path(sha)
        if path.exists():
            return sha
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def get(self, sha: str) -> bytes:
        return self._path(sha).read_bytes()

    def open(self, sha: str) -> BinaryIO:
        return self._path(sha).open("rb")

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()

    def delete(self, sha: str) -> None:
        self._path(sha).unlink(missing_ok=True)

    def local_path(self, sha: str) -> Path:
        path = self._path(sha)
        if not path.exists():
            raise FileNotFoundError(f"blob {sha} is not stored")
        return path


@lru_cache
def get_storage() -> BlobStore:
    """The configured blob store (local files under ``<data_dir>/blobs``)."""
    return LocalBlobStore(get_settings().data_dir / "blobs")
