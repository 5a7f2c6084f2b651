"""Encoding spread over workers: a job's images are encoded in shards by every free worker of its queue, then the
job's own worker trains on the merged features.

The feature cache in the blob store (``features/<backbone>/<sha>_v<view>...``, ``worker.job_files``) is where the
shards meet: a feature is keyed by backbone, image and view, computed deterministically from them, and written
atomically, so it does not matter which worker encodes an image, or whether two do. The shard rows
(``worker.shard_rows``) only decide who encodes what, with leases like a job's:

1. The job's runner (:func:`encode_job` with ml's plan, :class:`Spread`) lists the images whose features
   the store lacks. More than ``TAGSIFT_ENCODE_SHARD_IMAGES`` of them: it writes this attempt's shard rows (fenced
   on its job lease; an earlier attempt's rows are replaced, so a re-run plans only what is still missing) and
   sends ``tagsift.encode`` messages to the job's queue (at most :data:`FANOUT`; each helper that finds work left
   sends one more, so the call spreads over as many free workers as there are, and stops there).
2. The runner then claims shards itself, like any worker, and encodes them; when none is left to claim it waits
   for the others' to be ``done``. It never depends on a helper: with no free worker, or every message lost, it
   encodes every shard itself. A shard whose worker died (its lease expired) is claimed again by whoever asks next,
   the runner included.
3. A helper (:func:`run_encode_task`) loads its backbone, claims shards of the job for that backbone until none is
   left, encodes each (images fetched from the store, features written to it and uploaded before the shard is
   marked ``done``), renewing the shard's lease from a thread; it stops at once when the job is cancelled, ends, or
   is re-planned by another attempt, and gives back a shard it could not finish.
4. Once every shard is done the runner downloads what others encoded (an object store) and
   ``ml.pipeline.encode_plan`` reads all features from the cache; anything still missing is encoded there. A
   ``shards`` job event records the split.

Cancel: the runner's heartbeat stops its own encoding and wait; helpers see the flag within
``TAGSIFT_JOB_CANCEL_POLL_SECONDS``. The rows go when the job ends (``worker.training``) or with the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from app.config import Settings, get_settings
from app.db import session_scope
from app.queue import job_device
from app.storage import BlobStore, get_storage
from ml.errors import TrainingCancelled
from vocab import JobStatus
from worker import runtime
from worker.job_files import JobFiles, StoreFeatureCache, retry_storage
from worker.job_run import JobRun
from worker.leases import is_transient_db_error, new_runner_id, retry_db
from worker.loops import DONE, Loop
from worker.shard_rows import (
    Shard,
    claim_shard,
    finish_shard,
    give_back,
    job_state,
    renew_shard,
    shard_state,
    write_plan,
)

log = logging.getLogger("worker.training")

#: Messages the job's runner sends at first; every helper that finds work left sends one more.
FANOUT = 4

#: How often the runner looks at the shards while others encode the last ones.
WAIT_SECONDS = 0.2


def plan(needs: Sequence[tuple[str, int]], missing: Callable[[str, int], bool], size: int) -> list[tuple[int, list]]:
    """(views, shas) of each shard: the images with a view missing, in item order, grouped by their views (a
    training image needs ``views``, another the clean one), ``size`` images per shard."""
    groups: dict[int, list[str]] = {}
    for sha, views in needs:
        if any(missing(sha, v) for v in range(views)):
            groups.setdefault(views, []).append(sha)
    return [(views, shas[i : i + size]) for views, shas in groups.items() for i in range(0, len(shas), size)]


class ShardLease(Loop):
    """Renews our lease on one shard and watches the job, on a daemon thread (a :class:`worker.loops.Loop` that
    polls every ``job_cancel_poll_seconds`` and renews every ``job_heartbeat_seconds``) while used as a context
    manager: ``should_stop()`` turns true when the shard is no longer ours, or the job is cancelled, over or
    re-planned by another attempt."""

    def __init__(self, shard: Shard, *, runner: str, settings: Settings) -> None:
        self.shard, self.runner = shard, runner
        self.lease_seconds = settings.job_lease_seconds
        self.beat = max(0.05, settings.job_heartbeat_seconds)
        poll = max(0.05, min(settings.job_cancel_poll_seconds, self.beat))
        self.lost = self.job_stopped = False
        self._since_beat = 0.0
        super().__init__(f"shard-{shard.seq}", interval=poll, wait_first=True)

    def should_stop(self) -> bool:
        return self.lost or self.job_stopped

    def step(self) -> str | None:
        self._since_beat += self.interval
        if self._since_beat >= self.beat:
            self._since_beat = 0.0
            if not renew_shard(self.shard.id, runner=self.runner, lease_seconds=self.lease_seconds):
                self.lost = True
                return DONE
        state = job_state(self.shard.job_id)
        if state is None or state[0] != JobStatus.RUNNING or state[1] != self.shard.attempt or state[2]:
            self.job_stopped = True
            return DONE
        return None

    def on_error(self, exc: Exception) -> None:  # a database outage: keep trying, the lease rides a short one out
        if not is_transient_db_error(exc):
            log.exception("shard %s of job %s: lease thread failed", self.shard.seq, self.shard.job_id, exc_info=exc)


def encode_shard(
    shard: Shard,
    backbone,
    paths: Sequence[Path],
    cache,
    settings: Settings,
    *,
    should_stop: Callable[[], bool],
    on_progress: Callable[[int, int], None] | None = None,
    names: Sequence[str] | None = None,
) -> int:
    """Encode the shard's views of ``paths`` into ``cache`` (``ml.features.encode_images``); returns how many
    uploads to the store failed. Raises ``TrainingCancelled`` when ``should_stop()`` turns true between batches, a
    ``ValueError`` naming the image (``names``) that cannot be decoded."""
    from ml.features import encode_images

    encode_images(
        backbone,
        list(paths),
        shas=shard.shas,
        views=shard.views,
        cache=cache,
        seed=shard.seed,
        batch_size=settings.encode_batch_size,
        decode_workers=settings.decode_threads,
        names=names,
        should_cancel=should_stop,
        on_progress=on_progress,
    )
    return cache.flush()


# --- the job's runner ----------------------------------------------------------------------------------------------


def encode_job(run: JobRun, files: JobFiles, cache, backbone, plan, images, attempt: int, device: str, queue: str, cb):
    """The ``encoding`` stage of a job's run: the features of ml's ``plan`` that the store lacks encoded in shards by
    every free worker of the job's queue and this one (:class:`Spread`), whatever is still missing by
    ``ml.pipeline.encode_plan``, which returns them all; every new feature is in the store before this returns
    (a re-run elsewhere skips the encoding even if this run dies in its first epoch)."""
    from ml import pipeline  # torch: only in the process that runs the job

    settings = get_settings()
    try:
        backbone = runtime.image_encoder(backbone, settings.encoder, settings.model_cache_dir, files.storage)
        stage = {"items": len(plan.shas), "train_items": len(plan.train_idx), "views": plan.views, "device": device}
        run.stage("encoding", **stage, encoder=getattr(backbone, "engine", "torch"))
        paths = dict(zip(plan.shas, images, strict=True))
        spread = Spread(run, files, cache, backbone, paths=paths, attempt=attempt, seed=plan.seed, device=queue)
        spread.encode(plan.needs)
        return pipeline.encode_plan(
            backbone,
            plan,
            images,
            cache,
            cb,
            batch_size=settings.encode_batch_size,
            decode_workers=settings.decode_threads,
        )
    finally:
        cache.close()  # waits for the uploads of the features encoded here


class Spread:
    """The job's runner's side of the spread (see the module docstring, steps 1, 2 and 4): :func:`encode_job` calls
    :meth:`encode` with the plan's feature needs before ``ml.pipeline.encode_plan`` reads them from the cache."""

    def __init__(
        self,
        run: JobRun,
        files: JobFiles,
        cache: StoreFeatureCache,
        backbone,
        *,
        paths: dict[str, Path],
        attempt: int,
        seed: int,
        device: str,
    ) -> None:
        self.run, self.files, self.cache, self.backbone = run, files, cache, backbone
        self.paths, self.attempt, self.seed, self.device = paths, attempt, seed, device
        self.index = {sha: i for i, sha in enumerate(paths)}  # the job's item order
        self.settings = get_settings()

    def encode(self, needs: list[tuple[str, int]]) -> None:
        """Fill the cache with the features of ``needs`` (``(sha256, views)`` per image, ``ml.pipeline.JobPlan.needs``)
        that the store lacks, in shards over every free worker; nothing when at most one shard of work is left."""
        size = self.settings.encode_shard_images
        if size <= 0:
            return
        local = self.cache.local

        def missing(sha: str, view: int) -> bool:
            return not local.path(self.backbone.id, sha, view, self.seed).is_file()

        shards = plan(needs, missing, size)
        images = sum(len(shas) for _, shas in shards)
        if len(shards) < 2:  # at most one shard of work: nothing to share
            return
        started = time.monotonic()
        self.run.transaction("planning shards", lambda: self._write(shards))
        log.info(
            "job %s: %d images to encode (%d cached) in %d shards of up to %d", self.run.job_id, images,
            len(needs) - images, len(shards), size,
        )  # fmt: skip
        self._call_helpers(min(len(shards) - 1, FANOUT))
        state = self._work()
        self._fetch_others(shards)
        seconds = round(time.monotonic() - started, 3)
        event = {
            "shards": state.shards,
            "images": state.images,
            "cached_images": len(needs) - images,
            "views": sorted({views for views, _ in shards}),
            "encoded_by": state.encoded_by,
            "retaken": state.retaken,
            "seconds": seconds,
        }
        self.run.write(("shards", event))
        log.info("job %s: %d shards encoded in %.1f s by %s", self.run.job_id, state.shards, seconds, state.encoded_by)

    def _write(self, shards) -> None:
        with session_scope() as session:
            self.run.fenced_update(session, progress=dict(self.run.progress))  # only while the job is ours
            write_plan(session, self.run.job_id, self.attempt, self.backbone.id, self.seed, shards)

    def _call_helpers(self, count: int) -> None:
        from worker.celery_app import enqueue_encode

        try:
            enqueue_encode(self.run.job_id, self.device, count)
        except Exception as exc:  # the broker is away: this run encodes every shard itself
            log.warning("job %s: could not ask other workers to encode (%s); encoding alone", self.run.job_id, exc)

    def _work(self):
        """Claim and encode shards until none is left, then wait for the others' (their workers may die: their
        shards come back to be claimed)."""
        runner, job_id = self.run.runner, self.run.job_id
        lease_s = self.settings.job_lease_seconds
        while True:
            if self.run.heartbeat.should_stop():
                raise TrainingCancelled("cancel requested")
            shard = self.run.transaction(
                "claiming a shard",
                lambda: claim_shard(
                    job_id, runner=runner, lease_seconds=lease_s, backbone_id=self.backbone.id, helper=False
                ),
            )
            if shard is not None:
                self._encode_own(shard)
                continue
            state = self.run.transaction("reading shards", lambda: shard_state(job_id, self.attempt))
            self.run.within("encoding", state.done_images / max(state.images, 1))
            if state.done == state.shards:
                return state
            time.sleep(WAIT_SECONDS)

    def _encode_own(self, shard: Shard) -> None:
        paths = [self.paths[sha] for sha in shard.shas]
        before = self.run.transaction("reading shards", lambda: shard_state(self.run.job_id, self.attempt))

        def progress(done: int, total: int) -> None:
            share = done / max(total, 1) * len(shard.shas)
            self.run.within("encoding", (before.done_images + share) / max(before.images, 1))

        with ShardLease(shard, runner=self.run.runner, settings=self.settings) as lease:
            try:
                encode_shard(
                    shard,
                    self.backbone,
                    paths,
                    self.cache,
                    self.settings,
                    should_stop=lambda: self.run.heartbeat.should_stop() or lease.lost,
                    on_progress=progress,
                    names=[f"item {self.index[sha]}" for sha in shard.shas],  # as on one worker: the job's index
                )
            except TrainingCancelled:
                if self.run.heartbeat.should_stop():
                    raise
                log.warning("job %s: shard %d was taken over by another worker", self.run.job_id, shard.seq)
                return
        self.run.transaction("finishing a shard", lambda: finish_shard(shard.id, runner=self.run.runner))

    def _fetch_others(self, shards) -> None:
        """An object store: download the features other workers encoded (a file store shares the folder)."""
        storage = self.files.storage
        if not storage.remote:
            return
        keys = [
            self.cache.key(self.backbone.id, sha, v, self.seed)
            for views, shas in shards
            for sha in shas
            for v in range(views)
        ]
        keys = [k for k in keys if not storage.local(k).is_file()]
        retry_storage(
            lambda: storage.download_many(keys),
            what=f"job {self.run.job_id}: fetching the features other workers encoded",
            patience=self.files.patience,
        )


# --- a helper: the task tagsift.encode ------------------------------------------------------------------------------


def run_encode_task(job_id: str) -> str:
    """Encode shards of ``job_id`` on this worker until none is left to claim; returns what happened (for logs)."""
    settings = get_settings()
    patience = settings.job_lease_seconds
    state = retry_db(lambda: job_state(job_id), what=f"job {job_id}: read", patience=patience)
    if state is None or state[0] != JobStatus.RUNNING or state[2]:
        return "finished"
    device = retry_db(lambda: _job_device(job_id), what=f"job {job_id}: read", patience=patience)
    if not runtime.takes(runtime.worker_kind(settings.device), device):
        return "other device"
    backbone = runtime.get_backbone(
        settings.backbone,
        device=runtime.job_torch_device(settings.device),
        cache_dir=settings.model_cache_dir,
        offline=settings.offline,
    )
    storage = get_storage()
    backbone = runtime.image_encoder(backbone, settings.encoder, settings.model_cache_dir, storage)
    runner = new_runner_id()
    encoded = 0
    asked = False
    while True:
        shard = retry_db(
            lambda: claim_shard(job_id, runner=runner, lease_seconds=patience, backbone_id=backbone.id, helper=True),
            what=f"job {job_id}: claiming a shard",
            patience=patience,
        )
        if shard is None:
            break
        if not asked:  # work was left: call one more free worker (it finds nothing if there is none left)
            asked = True
            _ask_one_more(job_id, device)
        if not _encode_for_job(shard, backbone, storage, runner, settings):
            break
        encoded += 1
    log.info("job %s: this worker encoded %d shard(s)", job_id, encoded)
    return f"encoded {encoded}"


def _job_device(job_id: str) -> str:
    from sqlalchemy import select

    from app.models import Job

    with session_scope() as session:
        return job_device(session.scalar(select(Job.params).where(Job.id == job_id)))


def _ask_one_more(job_id: str, device: str) -> None:
    from worker.celery_app import enqueue_encode

    try:
        enqueue_encode(job_id, device, 1)
    except Exception as exc:
        log.warning("job %s: could not call another worker to encode: %s", job_id, exc)


def _encode_for_job(shard: Shard, backbone, storage: BlobStore, runner: str, settings: Settings) -> bool:
    """Encode one claimed shard and mark it done; False when this worker should stop taking the job's shards."""
    files = JobFiles(storage, shard.job_id, patience=settings.job_lease_seconds)
    cache = StoreFeatureCache(storage)
    started = time.monotonic()
    with ShardLease(shard, runner=runner, settings=settings) as lease:
        try:
            paths = files.images(shard.shas)
            names = [f"image {sha}" for sha in shard.shas]
            failed = encode_shard(shard, backbone, paths, cache, settings, should_stop=lease.should_stop, names=names)
        except TrainingCancelled:
            log.info("job %s: shard %d stopped (%s)", shard.job_id, shard.seq, "lost" if lease.lost else "job over")
            _give_back(shard, runner)
            return False
        except Exception:
            log.exception("job %s: shard %d failed on this worker; given back", shard.job_id, shard.seq)
            _give_back(shard, runner)
            return False
        finally:
            cache.close()
            files.release()
    if failed:  # features not in the store: someone else must encode them
        log.warning("job %s: shard %d: %d features not stored; given back", shard.job_id, shard.seq, failed)
        _give_back(shard, runner)
        return False
    finished = retry_db(
        lambda: finish_shard(shard.id, runner=runner),
        what=f"job {shard.job_id}: finishing shard {shard.seq}",
        patience=settings.job_lease_seconds,
    )
    log.info(
        "job %s: shard %d (%d images x %d views) encoded in %.1f s%s", shard.job_id, shard.seq, len(shard.shas),
        shard.views, time.monotonic() - started, "" if finished else " (no longer ours)",
    )  # fmt: skip
    return True


def _give_back(shard: Shard, runner: str) -> None:
    try:
        give_back(shard.id, runner=runner)
    except Exception as exc:  # its lease expires instead
        log.warning("job %s: shard %d not given back (%s); its lease will expire", shard.job_id, shard.seq, exc)
