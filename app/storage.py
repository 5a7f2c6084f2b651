"""Blob storage: images, model artifacts, checkpoints and the feature cache, behind one interface.

(Over 400 lines: both backends, their one key layout, the bounded download cache and the start-up checks stay
side by side so that the two backends cannot drift apart; a split into ``app/storage/`` by backend is the next cut.)

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

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

from app.config import Settings, get_settings

log = logging.getLogger(__name__)

#: Parallel requests of one batch call (put_many, fetch, download_many) to an object store.
S3_PARALLEL = 16

#: Files at least this large are uploaded in parts (boto3's transfer manager); smaller ones in one PUT.
MULTIPART_BYTES = 8 * 1024 * 1024

#: Files used this recently are never evicted from the local cache (another job on this machine may be reading them).
CACHE_GRACE_SECONDS = 600.0


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


def _check_key(key: str) -> str:
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


# --- local files -------------------------------------------------------------------------------------------------


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
        return self.root / _check_key(key)

    def download(self, key: str) -> bool:
        return self.local(key).is_file()

    def download_many(self, keys: Sequence[str]) -> int:
        return sum(self.download(k) for k in keys)

    def upload(self, key: str) -> None:
        if not self.local(key).is_file():
            raise FileNotFoundError(f"{key}: no such file in {self.root}")

    def delete_prefix(self, prefix: str) -> None:
        target = self.root / _check_key(prefix.rstrip("/"))
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    def trim(self, keep: Iterable[Path] = ()) -> None:
        return None


# --- S3 ----------------------------------------------------------------------------------------------------------


def _client(endpoint_url: str | None, *, attempts: int, connect_timeout: float, read_timeout: float):
    """A boto3 S3 client for S3-compatible servers: path-style addressing, checksums only when required (boto3
    >= 1.36's default checksums break many non-AWS servers). Not fork-safe: one per process (see S3BlobStore)."""
    import boto3
    from botocore.config import Config

    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=S3_PARALLEL * 2,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


class S3BlobStore:
    """Blobs and named objects in an S3 bucket under ``prefix``; downloads cached under ``cache_dir`` (LRU,
    ``cache_bytes``). The boto3 client is created in the process that uses it (after Celery forks its children)."""

    remote = True

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str, cache_dir: Path, cache_bytes: int) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.cache_dir = Path(cache_dir)
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._clients: dict[int, object] = {}

    # -- plumbing

    def describe(self) -> str:
        where = self.endpoint_url or "AWS S3"
        return f"s3://{self.bucket}/{self.prefix} at {where}"

    def _s3(self):
        pid = os.getpid()
        client = self._clients.get(pid)
        if client is None:
            with self._lock:
                client = self._clients.get(pid)
                if client is None:
                    client = _client(self.endpoint_url, attempts=3, connect_timeout=5, read_timeout=60)
                    self._clients = {pid: client}  # a forked child drops its parent's client
        return client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _errors(self, what: str, *, checking: bool = False) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket" or (checking and code in ("404", "NotFound")):
                raise StorageConfigError(
                    f"TAGSIFT_STORAGE_URL: bucket {self.bucket!r} does not exist at {self.endpoint_url or 'AWS S3'}"
                ) from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{what}: not in {self.describe()}") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden") or (
                code in ("InvalidToken", "ExpiredToken", "TokenRefreshRequired")
            ):
                raise StorageConfigError(
                    f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: refused by {self.endpoint_url or 'AWS S3'} for"
                    f" bucket {self.bucket!r} ({code or status}: {err.get('Message') or 'access denied'})"
                ) from None
            raise StorageUnavailable(
                f"object store {self.describe()}: {what} failed ({code or status}: {err.get('Message', '')})"
            ) from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageConfigError(
                f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: no usable credentials for {self.describe()} ({exc})"
            ) from None
        except BotoCoreError as exc:  # connection refused, timeouts, closed connections
            if checking:
                raise StorageConfigError(
                    f"TAGSIFT_S3_ENDPOINT_URL: {self.endpoint_url or 'AWS S3'} does not answer ({exc})"
                ) from None
            raise StorageUnavailable(f"object store {self.describe()} does not answer ({what}: {exc})") from None

    def _head_bucket_or_name_the_endpoint(self, client) -> None:
        """HEAD the bucket; a bare 404 is asked again with a GET: an S3 server says ``NoSuchBucket`` (the bucket is
        missing), any other HTTP server is not an S3 API, which names the endpoint setting, not the bucket."""
        from botocore.exceptions import ClientError

        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) not in ("404", "NotFound"):
                raise
            try:
                client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except ClientError as again:
                if again.response.get("Error", {}).get("Code") != "NoSuchBucket":
                    raise StorageConfigError(
                        f"TAGSIFT_S3_ENDPOINT_URL: {self.endpoint_url or 'AWS S3'} answers HTTP 404 without an S3"
                        " error: not an S3 API endpoint (the S3 port of SeaweedFS is 8333, of MinIO 9000)"
                    ) from None
            raise

    def check(self) -> None:
        client = _client(self.endpoint_url, attempts=1, connect_timeout=5, read_timeout=10)
        with self._errors("checking the bucket", checking=True):
            self._head_bucket_or_name_the_endpoint(client)
        probe = self._key(f".tagsift-check-{uuid.uuid4().hex}")
        with self._errors("writing a probe object", checking=True):
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            client.delete_object(Bucket=self.bucket, Key=probe)

    def _map(self, fn, items: Sequence) -> list:
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(S3_PARALLEL, len(items))) as pool:
            return list(pool.map(fn, items))

    # -- blobs

    def put(self, data: bytes) -> str:
        sha = sha256_hex(data)
        with self._errors(f"storing blob {sha}"):
            self._s3().put_object(Bucket=self.bucket, Key=self._key(blob_key(sha)), Body=data)
        return sha

    def put_many(self, datas: Sequence[bytes]) -> list[str]:
        return self._map(self.put, datas)

    def _send(self, path: Path, key: str) -> None:
        """Upload a local file: one PUT when small, boto3's multipart transfer when large (model files)."""
        client = self._s3()
        if path.stat().st_size < MULTIPART_BYTES:
            with open(path, "rb") as f:
                client.put_object(Bucket=self.bucket, Key=self._key(key), Body=f)
        else:
            client.upload_file(str(path), self.bucket, self._key(key))

    def put_file(self, path: Path) -> str:
        sha = sha256_file(path)
        with self._errors(f"storing blob {sha}"):
            self._send(path, blob_key(sha))
        return sha

    def get(self, sha: str) -> bytes:
        with self._errors(f"blob {sha}"):
            return self._s3().get_object(Bucket=self.bucket, Key=self._key(blob_key(sha)))["Body"].read()

    def open(self, sha: str) -> BinaryIO:
        with self._errors(f"blob {sha}"):
            return self._s3().get_object(Bucket=self.bucket, Key=self._key(blob_key(sha)))["Body"]

    def exists(self, sha: str) -> bool:
        try:
            with self._errors(f"blob {sha}"):
                self._s3().head_object(Bucket=self.bucket, Key=self._key(blob_key(sha)))
        except FileNotFoundError:
            return False
        return True

    def missing(self, shas: Iterable[str]) -> set[str]:
        shas = list(dict.fromkeys(shas))
        return {sha for sha, ok in zip(shas, self._map(self.exists, shas), strict=True) if not ok}

    def delete(self, sha: str) -> None:
        with self._errors(f"deleting blob {sha}"):
            self._s3().delete_object(Bucket=self.bucket, Key=self._key(blob_key(sha)))

    def path_if_local(self, sha: str) -> Path | None:
        return None

    def _download_to(self, key: str, dest: Path) -> bool:
        """Download ``key`` into ``dest`` atomically; False if the store has no such object."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self._errors(key):
                        body = self._s3().get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                        for chunk in iter(lambda: body.read(1 << 20), b""):
                            out.write(chunk)
                except FileNotFoundError:
                    return False
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _cached_blob(self, sha: str) -> Path:
        key = blob_key(sha)
        path = self.cache_dir / key
        if path.is_file():
            os.utime(path)  # recently used: evicted last
            return path
        if not self._download_to(key, path):
            raise FileNotFoundError(f"blob {sha} is not stored in {self.describe()}")
        return path

    def fetch(self, shas: Sequence[str]) -> list[Path]:
        return self._map(self._cached_blob, list(shas))

    # -- named objects

    def local(self, key: str) -> Path:
        return self.cache_dir / _check_key(key)

    def download(self, key: str) -> bool:
        return self._download_to(_check_key(key), self.local(key))

    def download_many(self, keys: Sequence[str]) -> int:
        return sum(self._map(self.download, list(keys)))

    def upload(self, key: str) -> None:
        with self._errors(f"storing {key}"):
            self._send(self.local(key), _check_key(key))

    def delete_prefix(self, prefix: str) -> None:
        _check_key(prefix.rstrip("/"))
        shutil.rmtree(self.cache_dir / prefix, ignore_errors=True)
        client = self._s3()
        with self._errors(f"deleting {prefix}"):
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                for i in range(0, len(keys), 1000):
                    client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})

    def trim(self, keep: Iterable[Path] = ()) -> None:
        """Evict the least recently used cached blobs and features until the cache fits ``cache_bytes``; files in
        ``keep``, files used in the last ``CACHE_GRACE_SECONDS`` and job checkpoints (``jobs/``) stay."""
        trim_cache(
            [self.cache_dir / "blobs", self.cache_dir / "features"],
            self.cache_bytes,
            keep={Path(p) for p in keep},
            grace=CACHE_GRACE_SECONDS,
        )


def trim_cache(folders: Sequence[Path], max_bytes: int, *, keep: set[Path], grace: float) -> int:
    """Delete the oldest-used files (by mtime, which a cache hit refreshes) under ``folders`` until their total size
    is at most ``max_bytes``; returns the bytes freed."""
    files = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for dirpath, _dirs, names in os.walk(folder):
            for name in names:
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                files.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in files)
    freed = 0
    now = time.time()
    for mtime, size, path in sorted(files, key=lambda f: f[0]):
        if total - freed <= max_bytes:
            break
        if path in keep or now - mtime < grace:
            continue
        path.unlink(missing_ok=True)
        freed += size
    if freed:
        log.info("local cache: evicted %d bytes (limit %d)", freed, max_bytes)
    return freed


# --- choosing the store --------------------------------------------------------------------------------------------


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
