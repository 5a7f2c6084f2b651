"""Logging for the API and the worker: one format on stderr, with the request id and job id of the current context.

* :data:`request_id` is set by :class:`app.api.request_log.RequestLogMiddleware` for each HTTP request (the client's
  ``X-Request-ID`` when it is a sane one, else a new id), stored on a job by ``POST /datasets/{id}/jobs`` and set
  again by the worker while it runs that job (with :data:`job_id`), so one grep follows a job from the request that
  created it to the worker's lines and the job's events.
* :func:`logging_config` is the ``logging.config.dictConfig`` both processes use: ``tagsift serve`` hands it to
  uvicorn (applied in every uvicorn process), the worker applies it from Celery's ``setup_logging`` signal.

A line reads ``2026-12-02T14:00:00.123Z INFO app.access [request_id=ab12 job_id=-] method=GET
path=/datasets status=200 duration_ms=3.1````.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar

#: The id of the HTTP request being handled, or of the request that created the job being run.
request_id: ContextVar[str | None] = ContextVar("tagsift_request_id", default=None)
#: The job being run (worker).
job_id: ContextVar[str | None] = ContextVar("tagsift_job_id", default=None)

#: Longest accepted X-Request-ID (the column ``jobs.request_id`` is 128 wide).
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_REQUEST_ID}}}")

FORMAT = "%(asctime)s %(levelname)s %(name)s [request_id=%(request_id)s job_id=%(job_id)s] %(message)s"


def clean_request_id(value: str | None) -> str:
    """``value`` when it is a usable request id (1-128 characters of ``A-Za-z0-9._:@/+=-``), else a new one."""
    if value is not None and _REQUEST_ID.fullmatch(value.strip()):
        return value.strip()
    return uuid.uuid4().hex


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``job_id`` (``-`` when unset) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get() or "-"
        if not hasattr(record, "job_id"):
            record.job_id = job_id.get() or "-"
        return True


class UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"


def logging_config(level: str) -> dict:
    """A ``dictConfig`` for the API and the worker: everything through one stderr handler in :data:`FORMAT`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"tagsift": {"()": UTCFormatter, "format": FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "tagsift",
                "filters": ["context"],
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's own loggers go through the root handler; its access log is replaced by app.access
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }
