"""The errors ml raises across modules, in one place (worker maps each to a job outcome)."""

from __future__ import annotations


class TrainingCancelled(Exception):
    """Raised between steps (or encoding batches) when should_cancel() returns True."""


class BackboneLoadError(RuntimeError):
    """A backbone could not be built; the message names it, the cause and how to use a local checkpoint."""


class InvalidCandidates(ValueError):
    """A job's candidate sets or class list cannot be trained on (the message names the item or class)."""


class StaleCheckpoint(ValueError):
    """An epoch checkpoint written for other data or another config: it cannot be resumed (drop it, start over)."""
