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
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from app.config import get_settings
from app.queue import TRAIN_TASK, celery_config

log = logging.getLogger(__name__)

celery_app = Celery("tagsift", include=["worker.tasks"])
celery_app.conf.update(celery_config(get_settings()))

_reaper = None
_webhooks = None


def enqueue_train(job_id: str) -> None:
    """Send ``tagsift.train`` for ``job_id`` (the row is committed already)."""
    celery_app.send_task(TRAIN_TASK, args=[job_id], queue=get_settings().queue)


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    global _reaper
    from worker.leases import Reaper

    settings = get_settings()
    if settings.job_reap_interval_seconds <= 0:
        return
    _reaper = Reaper(
        interval=settings.job_reap_interval_seconds,
        requeue_after_seconds=settings.job_requeue_after_seconds,
        enqueue=enqueue_train,
    ).start()
    log.info("reaper started (every %ss)", settings.job_reap_interval_seconds)


@worker_ready.connect
def _start_webhooks(sender=None, **_kwargs) -> None:
    """The webhook sender thread (``worker.webhooks``), beside the reaper in the main process."""
    global _webhooks
    from worker.webhooks import Dispatcher

    settings = get_settings()
    if settings.webhook_poll_seconds <= 0:
        return
    _webhooks = Dispatcher(settings).start()
    log.info("webhook sender started (every %ss)", settings.webhook_poll_seconds)


@worker_shutting_down.connect
def _stop_reaper(**_kwargs) -> None:
    if _reaper is not None:
        _reaper.stop()
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
