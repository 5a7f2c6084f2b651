"""The Celery application of the worker processes (same configuration as the API's client)."""

from __future__ import annotations

from celery import Celery

from app.config import get_settings
from app.queue import celery_config

celery_app = Celery("tagsift", include=["worker.tasks"])
celery_app.conf.update(celery_config(get_settings()))
