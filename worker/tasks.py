"""Celery tasks: thin shells that load rows by id, call ``ml/`` and save the results."""

from __future__ import annotations

from worker.celery_app import celery_app  # noqa: F401  (tasks register on this app)
