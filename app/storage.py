"""Blob storage: images, model artifacts, checkpoints and the feature cache, behind one interface.

The public face of the store: the file backend, choosing the store from the settings, and (re-exported) what the
backends share (:mod:`app.storage_base`: errors, keys, the :class:`BlobStore` interface) and the S3 backend
(:mod:`app.storage_s3`). Callers import all of it from here.

``TAGSIFT_STORAGE_URL`` picks the backend (:func:`open_storage`):

- ``file://<dir>`` (the default, ``file://<data_dir>``): :class:`LocalBlobStore`, plain files under ``<dir>``;
- ``s3://<bucket>/<prefix>``: :class:`S3BlobStore`, the same keys under ``<prefix>/`` in an S3 bucket (AWS, or any
  S3-compatible server at ``TAGSIFT_S3_ENDPOINT_URL``; credentials from the standard ``AWS_*`` variables, which
  boto3 reads itself). What a machine downloads is kept in a bounded LRU cache under ``<data_dir>/cache``.

Two kinds of objects, one key layout for both backends:

- **blobs**, content-addressed by sha256 (images, model artifacts): ``blobs/ab/cd/<sha256>``;
  :meth:`put`/:meth:`get`/:meth:`open`/:meth:`exists`/:meth:`delete`, and :meth:`fetch` for a local file.
- **named objects** that a worker writes and a re-run on another machine reads (``jobs/<id>/ckpt.pt``,
  ``features/...``): each has a working copy on this machine at :meth:`local` (for a file store, the store's own
  file); :meth:`upload` sends it, :meth:`download` brings the store's version.

Errors: a missing blob or object is ``FileNotFoundError``; a store that does not answer is
:class:`StorageUnavailable`; a bad setting (scheme, bucket, credentials, endpoint) is :class:`StorageConfigError`,
whose message starts with the setting's name. ``tagsift serve`` and ``tagsift worker`` call :meth:`check` first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from app.config import Settings, get_settings
from app.storage_base import (
    BlobStore,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
    blob_key,
    check_key,
    sha256_file,
    sha256_hex,
)
from app.storage_s3 import CACHE_GRACE_SECONDS, MULTIPART_BYTES, S3_PARALLEL, S3BlobStore, trim_cache

__all__ = [
    "CACHE_GRACE_SECONDS",
    "MULTIPART_BYTES",
    "S3_PARALLEL",
    "BlobStore",
    "LocalBlobStore",
    "S3BlobStore",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailable",
    "blob_key",
    "check_storage",
    "get_storage",
    "open_storage",
    "sha256_file",
    "sha256_hex",
    "trim_cache",
]


def _atomic_write(path: Path, data: bytes) -> None:
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


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalBlobStore:
    """Blobs and named objects as files under ``root``, written atomically (temp file + rename). With the default
    root, ``<data_dir>``, this is the layout of every earlier release: ``blobs/``, ``jobs/``, ``features/``."""

    remote = False

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return f"file://{self.root}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".tagsift-check-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageConfigError(f"TAGSIFT_STORAGE_URL: cannot write to {self.root} ({exc.strerror})") from None

    def _path(self, sha: str) -> Path:
        return self.root / blob_key(sha)

    def put(self, data: bytes) -> str:
        sha = sha256_hex(data)
        path = self._path(sha)
        if not path.exists():
            _atomic_write(path, data)
        return sha

    def put_many(self, datas: Sequence[bytes]) -> list[str]:
        return [self.put(d) for d in datas]

    def put_file(self, path: Path) -> str:
        sha = sha256_file(path)
        target = self._path(sha)
        if not target.exists():
            _atomic_copy(path, target)
        return sha

    def get(self, sha: str) -> bytes:
        return self._path(sha).read_bytes()

    def open(self, sha: str) -> BinaryIO:
        return self._path(sha).open("rb")

    def exists(self, sha: str) -> bool:
        return self._path(sha).exists()

    def missing(self, shas: Iterable[str]) -> set[str]:
        return {sha for sha in shas if not self.exists(sha)}

    def delete(self, sha: str) -> None:
        self._path(sha).unlink(missing_ok=True)

    def path_if_local(self, sha: str) -> Path | None:
        path = self._path(sha)
        return path if path.exists() else None

    def local_path(self, sha: str) -> Path:
        """The blob's file; ``FileNotFoundError`` if absent (kept for callers of earlier releases: use fetch)."""
        path = self._path(sha)
        if not path.exists():
            raise FileNotFoundError(f"blob {sha} is not stored")
        return path

    def fetch(self, shas: Sequence[str]) -> list[Path]:
        return [self.local_path(sha) for sha in shas]

    # named objects: the working copy is the store's own file (a shared folder is used in place)

    def local(self, key: str) -> Path:
        return self.root / check_key(key)

    def download(self, key: str) -> bool:
        return self.local(key).is_file()

    def download_many(self, keys: Sequence[str]) -> int:
        return sum(self.download(k) for k in keys)

    def upload(self, key: str) -> None:
        if not self.local(key).is_file():
            raise FileNotFoundError(f"{key}: no such file in {self.root}")

    def delete_prefix(self, prefix: str) -> None:
        target = self.root / check_key(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    def trim(self, keep: Iterable[Path] = ()) -> None:
        return None


def open_storage(settings: Settings) -> BlobStore:
    """The store ``settings.storage_url`` names; :class:`StorageConfigError` for a URL that names none."""
    url = settings.storage_url.strip()
    if not url:
        return LocalBlobStore(settings.data_dir)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = (parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else parts.path
        if not path:
            raise StorageConfigError(f"TAGSIFT_STORAGE_URL: {url!r} names no folder; use file:///path/to/folder")
        return LocalBlobStore(Path(path).expanduser().resolve())
    if scheme == "s3":
        bucket = parts.netloc
        if not (3 <= len(bucket) <= 63) or not all(c.islower() or c.isdigit() or c in ".-" for c in bucket):
            raise StorageConfigError(
                f"TAGSIFT_STORAGE_URL: {bucket!r} in {url!r} is not an S3 bucket name (3-63 characters: lower-case"
                " letters, digits, dots, hyphens); use s3://<bucket>/<prefix>"
            )
        prefix = parts.path.strip("/")
        if any(p in (".", "..") for p in prefix.split("/")) or "//" in prefix:
            raise StorageConfigError(f"TAGSIFT_STORAGE_URL: bad prefix {prefix!r} in {url!r}")
        endpoint = settings.s3_endpoint_url.strip()
        if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
            raise StorageConfigError(f"TAGSIFT_S3_ENDPOINT_URL: {endpoint!r} is not an http:// or https:// URL")
        return S3BlobStore(
            bucket,
            prefix,
            endpoint_url=endpoint,
            cache_dir=settings.data_dir / "cache",
            cache_bytes=settings.storage_cache_bytes,
        )
    raise StorageConfigError(
        f"TAGSIFT_STORAGE_URL: unknown scheme {parts.scheme + '://' if parts.scheme else '(none)'} in {url!r};"
        " use file://<dir> or s3://<bucket>/<prefix>"
    )


@lru_cache
def get_storage() -> BlobStore:
    """The configured blob store (``TAGSIFT_STORAGE_URL``; default: files under ``<data_dir>``)."""
    return open_storage(get_settings())


def check_storage() -> BlobStore:
    """The configured store, checked (readable and writable); :class:`StorageConfigError` names the bad setting."""
    storage = get_storage()
    storage.check()
    return storage
