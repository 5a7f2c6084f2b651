"""The S3 backend of the blob store (:class:`S3BlobStore`, chosen by ``TAGSIFT_STORAGE_URL=s3://...`` in
:func:`app.storage.open_storage`) and its bounded download cache (:func:`trim_cache`).

The keys are :mod:`app.storage_base`'s, the same as the file store's; boto3 is imported only when a client is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from app.storage_base import (
    StorageConfigError,
    StorageUnavailable,
    blob_key,
    check_key,
    sha256_file,
    sha256_hex,
)

log = logging.getLogger("app.storage")  # the name its log lines had before the backend had a module of its own

#: Parallel requests of one batch call (put_many, fetch, download_many) to an object store.
S3_PARALLEL = 16

#: Files at least this large are uploaded in parts (boto3's transfer manager); smaller ones in one PUT.
MULTIPART_BYTES = 8 * 1024 * 1024

#: Files used this recently are never evicted from the local cache (another job on this machine may be reading them).
CACHE_GRACE_SECONDS = 600.0


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
        return self.cache_dir / check_key(key)

    def download(self, key: str) -> bool:
        return self._download_to(check_key(key), self.local(key))

    def download_many(self, keys: Sequence[str]) -> int:
        return sum(self._map(self.download, list(keys)))

    def upload(self, key: str) -> None:
        with self._errors(f"storing {key}"):
            self._send(self.local(key), check_key(key))

    def delete_prefix(self, prefix: str) -> None:
        check_key(prefix.rstrip("/"))
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
