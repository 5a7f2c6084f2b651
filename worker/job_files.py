"""A job's files on this worker's disk, always through the blob store (:mod:`app.storage`): the images it trains
on, its epoch checkpoint and the feature cache.

With the default file store these are the store's own files and nothing is copied. With an object store (s3://)
the images and the features already computed are downloaded into this machine's bounded cache before ``ml`` runs,
``ml`` gets local paths, and what it writes is sent back: the checkpoint after every epoch (a re-run on another
machine resumes from it) and each new feature (a re-run encodes nothing twice). ``ml`` never sees the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app.storage import S3_PARALLEL, BlobStore, StorageUnavailable
from worker.retry import with_backoff

log = logging.getLogger("worker.training")

T = TypeVar("T")

FEATURES = "features"


def checkpoint_key(job_id: str) -> str:
    return f"jobs/{job_id}/ckpt.pt"


def retry_storage(fn: Callable[[], T], *, what: str, patience: float, first_delay: float = 0.5) -> T:
    """``fn()``, retried with backoff (doubling up to 5 s) while the object store does not answer; raises
    :class:`StorageUnavailable` naming ``what`` once ``patience`` seconds have passed. Other errors (a missing blob,
    refused credentials) at once."""
    return with_backoff(
        fn,
        what=what,
        resource="object store",
        patience=patience,
        first_delay=first_delay,
        transient=lambda exc: isinstance(exc, StorageUnavailable),
        give_up=lambda failures, exc: StorageUnavailable(
            f"{what}: the object store did not answer for {patience:.0f} s ({failures} tries): {exc}"
        ),
    )


class JobFiles:
    """The files of one run of job ``job_id`` on this machine (see the module docstring)."""

    def __init__(self, storage: BlobStore, job_id: str, *, patience: float) -> None:
        self.storage = storage
        self.job_id = job_id
        self.patience = patience
        self.pinned: list[Path] = []
        self.features: StoreFeatureCache | None = None

    def images(self, shas: Sequence[str]) -> list[Path]:
        """Local files of the job's images (downloaded in parallel into the cache for an object store)."""
        self.storage.trim()  # make room first (the files of a job that runs here now are recent: kept)
        paths = retry_storage(
            lambda: self.storage.fetch(shas), what=f"job {self.job_id}: fetching its images", patience=self.patience
        )
        self.pinned.extend(paths)
        return paths

    def checkpoint(self) -> Path:
        """Where ``ml`` reads and writes the epoch checkpoint: the store's latest one, if any, is there."""
        key = checkpoint_key(self.job_id)
        found = retry_storage(
            lambda: self.storage.download(key),
            what=f"job {self.job_id}: fetching its checkpoint",
            patience=self.patience,
        )
        if found and self.storage.remote:
            log.info("job %s: resuming from the checkpoint in %s", self.job_id, self.storage.describe())
        return self.storage.local(key)

    def save_checkpoint(self) -> str | None:
        """Send the checkpoint ``ml`` just wrote to the store; returns an error message instead of raising (a run
        goes on without it: only a re-run elsewhere would start further back)."""
        if not self.storage.remote:
            return None
        try:
            retry_storage(
                lambda: self.storage.upload(checkpoint_key(self.job_id)),
                what=f"job {self.job_id}: storing its checkpoint",
                patience=min(self.patience, 30.0),
            )
        except Exception as exc:
            log.warning("job %s: checkpoint not stored: %s", self.job_id, exc)
            return str(exc)[:500]
        return None

    def feature_cache(self, backbone_id: str, shas: Sequence[str], views: int, seed: int) -> StoreFeatureCache:
        """ml's feature cache on this machine, first filled with what the store has for these images and views."""
        cache = StoreFeatureCache(self.storage)
        if self.storage.remote:
            keys = [cache.key(backbone_id, sha, v, seed) for sha in dict.fromkeys(shas) for v in range(views)]
            found = retry_storage(
                lambda: self.storage.download_many(keys),
                what=f"job {self.job_id}: fetching cached features",
                patience=self.patience,
            )
            log.info(
                "job %s: %d of %d feature views found in %s", self.job_id, found, len(keys), self.storage.describe()
            )
        self.features = cache
        return cache

    def flush_features(self) -> None:
        """Wait until the features encoded so far are in the store (before training: a re-run elsewhere skips the
        encoding even if this run dies in the first epoch)."""
        if self.features is not None:
            self.features.flush()

    def remove(self) -> None:
        """The job is over (succeeded, failed, cancelled): its checkpoint goes, here and in the store."""
        try:
            self.storage.delete_prefix(f"jobs/{self.job_id}/")
        except Exception as exc:  # a leftover checkpoint is only wasted space
            log.warning("job %s: could not remove its checkpoint: %s", self.job_id, exc)

    def release(self) -> None:
        """This run is done with its downloads: the cache may evict them."""
        self.pinned.clear()
        try:
            self.storage.trim()
        except OSError as exc:
            log.warning("local cache: %s", exc)


class StoreFeatureCache:
    """``ml.features.FeatureCache`` on the store's ``features/`` objects: reads are local (the job's keys were
    downloaded first); each new feature is written locally and, for an object store, uploaded in the background
    (:meth:`flush` waits). An upload that fails is logged, not fatal: the feature is only computed again later."""

    def __init__(self, storage: BlobStore) -> None:
        from ml.features import FeatureCache  # torch: only in the process that runs the job

        self.storage = storage
        self.local = FeatureCache(storage.local(FEATURES))
        self._pool = ThreadPoolExecutor(S3_PARALLEL, thread_name_prefix="feature-upload") if storage.remote else None
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self.failed = 0

    def key(self, backbone_id: str, sha: str, view: int, seed: int = 0) -> str:
        rel = self.local.path(backbone_id, sha, view, seed).relative_to(self.local.root)
        return f"{FEATURES}/{rel.as_posix()}"

    def get(self, backbone_id: str, sha: str, view: int, seed: int = 0):
        return self.local.get(backbone_id, sha, view, seed)

    def put(self, backbone_id: str, sha: str, view: int, feature, seed: int = 0) -> None:
        self.local.put(backbone_id, sha, view, feature, seed)
        if self._pool is not None:
            future = self._pool.submit(self.storage.upload, self.key(backbone_id, sha, view, seed))
            with self._lock:
                self._pending.append(future)

    def flush(self) -> int:
        """Wait for the uploads; returns how many failed (each logged once)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            exc = future.exception()
            if exc is not None:
                self.failed += 1
                if self.failed == 1:
                    log.warning("feature cache: uploads to the store fail (features stay local): %s", exc)
        return self.failed

    def close(self) -> None:
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
