"""The Celery application of the worker processes (same configuration as the API's client).

Signals wired here (main process only does light work, never torch / CUDA):

* ``worker_ready``: start the reaper thread (``worker.leases.Reaper``) in the worker's main process; it re-enqueues
  jobs whose runner died (expired lease) and queued jobs whose message may be lost. Its first pass runs at once, so
  a restarted embedded worker picks up what its previous process left behind.
* ``worker_ready``: also start the webhook sender thread (``worker.webhooks.Dispatcher``), which sends the
  deliveries that state changes left in the outbox.
* ``worker_process_init``: a prefork child drops the database connections it inherited from its parent, then
  imports torch, open_clip and ``ml`` once (no CUDA is touched), so that its first job does not pay seconds of
  imports (Airflow's practice: preload expensive imports once per worker; ``worker_proc_alive_timeout`` in
  ``app.queue.celery_config`` leaves the child time for it).
"""

from __future__ import annotations

import logging
import os
import time

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready, worker_shutting_down

from app.config import apply_model_cache_environment, get_settings
from app.queue import ENCODE_TASK, celery_config, enqueue_job, job_device

log = logging.getLogger(__name__)

apply_model_cache_environment(get_settings())  # every download under TAGSIFT_MODEL_CACHE_DIR (app.config)
celery_app = Celery("tagsift", include=["worker.tasks"])
celery_app.conf.update(celery_config(get_settings()))

_reaper = None
_health = None
_webhooks = None


@setup_logging.connect
def _configure_logging(**_kwargs) -> None:
    """The API's format (app.logs): every line with the request id and job id of the job being run."""
    import logging.config

    from app.logs import logging_config

    logging.config.dictConfig(logging_config(get_settings().log_level))


def enqueue_encode(job_id: str, device: str = "auto", count: int = 1) -> None:
    """Send ``count`` ``tagsift.encode`` messages for ``job_id`` to the queue of the job's ``device``: each asks one
    free worker to encode the job's pending shards (``worker.shards``)."""
    queue = get_settings().queue_for(job_device({"device": device}))
    for _ in range(count):
        celery_app.send_task(ENCODE_TASK, args=[job_id], queue=queue)


def runtime_is_live() -> bool:
    from worker import runtime

    return runtime.is_live_process()


@worker_ready.connect
def _start_health_file(sender=None, **_kwargs) -> None:
    global _health
    from worker import runtime
    from worker.health import HealthFile

    if runtime_is_live():
        return
    settings = get_settings()
    if settings.worker_health_file is None:
        return
    kind = runtime.declared_worker_kind()
    info = {"kind": kind or "unknown", "queues": settings.worker_queues(kind) if kind else []}
    _health = HealthFile(settings.worker_health_file, interval=settings.worker_health_seconds, info=info).start()
    log.info("health file %s (every %ss)", settings.worker_health_file, settings.worker_health_seconds)


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    global _reaper
    from worker.leases import Reaper

    if runtime_is_live():
        return
    settings = get_settings()
    if settings.job_reap_interval_seconds <= 0:
        return
    _reaper = Reaper(
        interval=settings.job_reap_interval_seconds,
        requeue_after_seconds=settings.job_requeue_after_seconds,
        enqueue=enqueue_job,  # the API's one way to send a job: to the queue of its device, whichever worker reaps
    ).start()
    log.info("reaper started (every %ss)", settings.job_reap_interval_seconds)


@worker_ready.connect
def _start_webhooks(sender=None, **_kwargs) -> None:
    """The webhook sender thread (``worker.webhooks``), beside the reaper in the main process."""
    global _webhooks
    from worker.webhooks import Dispatcher

    if runtime_is_live():
        return
    settings = get_settings()
    if settings.webhook_poll_seconds <= 0:
        return
    _webhooks = Dispatcher(settings).start()
    log.info("webhook sender started (every %ss)", settings.webhook_poll_seconds)


@worker_shutting_down.connect
def _stop_reaper(**_kwargs) -> None:
    if _reaper is not None:
        _reaper.stop()
    if _health is not None:
        _health.stop()
    if _webhooks is not None:
        _webhooks.stop()


@worker_process_init.connect
def _fresh_db_connections(**_kwargs) -> None:
    from app.db import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)  # pooled connections belong to the parent
    _preload_ml()


#: Logged by each prefork child once its imports are done (``tagsift bench`` waits for it before timing a job).
CHILD_READY = "worker child ready"


def _preload_ml() -> None:
    started = time.monotonic()
    import ml.export
    import ml.features
    import ml.train  # noqa: F401  (torch, open_clip and the learning code, once per child)

    log.info(
        "%s: pid %d imported torch, open_clip and ml in %.1f s", CHILD_READY, os.getpid(), time.monotonic() - started
    )
