"""A light Celery client for the API: it sends tasks by name and never imports ``worker`` or ``ml``."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app import embedded_broker
from app.config import Settings, get_settings

TRAIN_TASK = "tagsift.train"
#: A worker's call for help with a job's encoding shards (sent by workers only: ``worker.shards``).
ENCODE_TASK = "tagsift.encode"


def celery_config(settings: Settings) -> dict:
    """Celery settings shared by the API's client and the worker (one place, one truth)."""
    transport_options: dict = {}
    broker_url, transport = settings.broker_url, None
    if (engine_url := embedded_broker.split_url(broker_url)) is not None:
        # kombu's SQLAlchemy transport with a shorter poll than its 1 s (see app.embedded_broker)
        broker_url, transport = engine_url, embedded_broker.TRANSPORT
        transport_options = {"polling_interval": settings.broker_poll_seconds}
    elif broker_url.startswith(("redis://", "rediss://")):
        # An unacked message is redelivered after this; it must exceed the longest job.
        transport_options = {
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        }
    return {
        "broker_url": broker_url,
        "broker_transport": transport,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A broker outage must not cancel a training run (the job row's lease decides who runs a job, and a restart
        # of Redis loses the message anyway); Celery 6 would default this to True.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # a prefork child imports torch/open_clip/ml at start (worker.celery_app): give it time to report UP
        "worker_proc_alive_timeout": 60.0,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
    }


@lru_cache
def get_celery() -> Celery:
    app = Celery("tagsift")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue(task_name: str, *args: str, queue: str | None = None) -> None:
    """Send ``task_name`` with string ids to ``queue`` (default TAGSIFT_QUEUE); call only after the rows it names are
    committed."""
    get_celery().send_task(task_name, args=list(args), queue=queue or get_settings().queue)


def job_device(params: dict | None) -> str:
    """Where a job asked to run: 'auto', 'cpu' or 'gpu' (``params["device"]``; jobs older than the field: 'auto')."""
    device = (params or {}).get("device")
    return device if device in ("cpu", "gpu") else "auto"


def enqueue_job(job_id: str, device: str) -> None:
    """Send ``tagsift.train`` for ``job_id`` to the queue of its device (see docs/deploy.md, Queues and devices)."""
    enqueue(TRAIN_TASK, job_id, queue=get_settings().queue_for(device))


def broker_reachable(timeout: float = 2.0) -> bool:
    """One connection attempt and one quick retry (0.2 s apart), so that /readyz answers fast while the broker is
    down (kombu's default would sleep 2 s before its retry)."""
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0.2, interval_step=0.2, interval_max=0.2, timeout=timeout
            )
        return True
    except Exception:
        return False
