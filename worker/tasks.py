"""Celery tasks: thin shells that take ids and hand over to the job code (``worker.training``).

``tagsift.train`` is acks_late + reject_on_worker_lost: its message stays in the broker until the run ends, and is
redelivered if the child process running it dies. That is safe because the run is idempotent: it claims the job
row atomically first (a duplicate delivery of a finished or live job returns quietly) and resumes from the last
epoch checkpoint. It never retries through Celery: errors are recorded on the job row (``worker.training``).

``tagsift.encode`` asks a free worker to help a running job with its encoding shards (``worker.shards``); the
shard rows decide who encodes what, so a duplicate or a late message only finds nothing left to do.

``tagsift.refit`` (``worker.refit``) runs on the live queue only: a refit row is claimed ``queued -> running`` once.
"""

from __future__ import annotations

from app.queue import ENCODE_TASK, TRAIN_TASK
from app.services.refits import REFIT_TASK
from worker.celery_app import celery_app


@celery_app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=0)
def train(job_id: str) -> str:
    """Train job ``job_id`` (a row the API committed before enqueueing); returns the run's outcome."""
    from worker.training import run_train_job  # torch and ml load in the process that runs the task

    return run_train_job(job_id)


@celery_app.task(name=ENCODE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=0)
def encode(job_id: str) -> str:
    """Encode pending shards of job ``job_id`` until none is left (``worker.shards``); returns what it did."""
    from worker.shards import run_encode_task

    return run_encode_task(job_id)


@celery_app.task(name=REFIT_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True, max_retries=0)
def refit(refit_id: str) -> str:
    """Refit a dataset's latest model after review decisions (``worker.refit``; the live queue's light process)."""
    from worker.refit import run_refit

    return run_refit(refit_id)
