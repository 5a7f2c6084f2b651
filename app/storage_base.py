"""What every blob store shares: its errors, content addresses and keys, and the :class:`BlobStore` interface.

:mod:`app.storage` is the public face (the file store, choosing the store from the settings) and re-exports these;
the S3 backend (:mod:`app.storage_s3`) imports them from here, so the modules form no cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol


class StorageError(RuntimeError):
    """The blob store failed (see the subclasses)."""


class StorageUnavailable(StorageError):
    """The object store does not answer, or answers with a server error (worth retrying later)."""


class StorageConfigError(StorageError):
    """A storage setting is wrong (unknown scheme, no such bucket, refused credentials, endpoint not answering at
    start-up); the message starts with the setting's name."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_sha(sha: str) -> str:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"not a sha256 hex digest: {sha[:80]!r}")
    return sha


def blob_key(sha: str) -> str:
    _check_sha(sha)
    return f"blobs/{sha[:2]}/{sha[2:4]}/{sha}"


def check_key(key: str) -> str:
    """``key`` when it is a relative storage key (no empty, ``.`` or ``..`` segment), else ``ValueError``."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a storage key: {key[:200]!r}")
    return key


class BlobStore(Protocol):
    #: True when the files live elsewhere and this machine holds cached copies (an object store).
    remote: bool

    def describe(self) -> str:
        """Where the store is, for messages (no credentials)."""

    def check(self) -> None:
        """Raise :class:`StorageConfigError` unless the store can be read and written (start-up check)."""

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its sha256."""

    def put_many(self, datas: Sequence[bytes]) -> list[str]:
        """:meth:`put` each (in parallel for an object store)."""

    def put_file(self, path: Path) -> str:
        """Store the file's bytes (streamed: model files can be large) and return their sha256."""

    def get(self, sha: str) -> bytes:
        """The bytes of blob ``sha``; ``FileNotFoundError`` if absent."""

    def open(self, sha: str) -> BinaryIO:
        """A readable binary stream of blob ``sha``."""

    def exists(self, sha: str) -> bool: ...

    def missing(self, shas: Iterable[str]) -> set[str]:
        """The shas among ``shas`` that are not stored."""

    def delete(self, sha: str) -> None:
        """Remove blob ``sha`` if present."""

    def path_if_local(self, sha: str) -> Path | None:
        """The store's own file of blob ``sha`` when it is on this machine's disk, else None (never downloads)."""

    def fetch(self, shas: Sequence[str]) -> list[Path]:
        """Local files holding the blobs (the store's own files, or downloads into this machine's cache)."""

    def local(self, key: str) -> Path:
        """This machine's working copy of named object ``key`` (it may not exist)."""

    def download(self, key: str) -> bool:
        """Make :meth:`local` hold the store's version of ``key``; False (and the local copy left) if none."""

    def download_many(self, keys: Sequence[str]) -> int:
        """:meth:`download` each; returns how many the store had."""

    def upload(self, key: str) -> None:
        """Send the working copy of ``key`` to the store."""

    def delete_prefix(self, prefix: str) -> None:
        """Remove every named object under ``prefix`` (a folder such as ``jobs/<id>/``), here and in the store."""

    def trim(self, keep: Iterable[Path] = ()) -> None:
        """Evict least recently used cached files beyond the cache size (a no-op for a file store)."""
