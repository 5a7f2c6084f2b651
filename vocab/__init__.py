"""The names app and ml share, as data: job statuses, training methods, PLL losses (and their aliases), the values of
the other choice parameters, every job parameter's bounds and default, and the fixed steps of ``preprocess.json``.

app may not import ml and ml may not import app (tests/test_boundaries.py); both import this package, which imports
nothing but the standard library (a boundary test holds that too). A name added here reaches the API's schema
(``app/schemas.py``), the web form (``app/web/pages.py``) and ml's checks; ml's own registries (``ml.train.METHODS``,
``ml.losses.LOSSES``) are tied to these lists by tests/test_contracts.py, so adding a method or a loss on one side only
fails a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# --- job statuses ----------------------------------------------------------------------------------------------------


class JobStatus(StrEnum):
    """A job's ``status``. Every change of it is one call of ``app.services.job_states.transition``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUSES: tuple[str, ...] = tuple(s.value for s in JobStatus)
#: Statuses a job never leaves.
FINISHED_STATUSES: frozenset[str] = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
#: The webhook event (``app.schemas.WebhookEvent``) a job sends when it enters each status.
STATUS_EVENTS: dict[str, str] = {
    JobStatus.QUEUED: "job.queued",
    JobStatus.RUNNING: "job.started",
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}

# --- methods and losses ----------------------------------------------------------------------------------------------

#: What a job asks for when it leaves the method to the server (``app/job_defaults.py`` resolves it).
AUTO_METHOD_NAME = "auto"

#: The training methods (ml/train.py), in the order the web form offers them (after ``auto`` and the one it stands
#: for, ``app.job_defaults.AUTO_METHOD``).
METHODS: tuple[str, ...] = ("aligned_head", "prompt_alignment", "coop", "linear_probe", "zero_shot")
#: What each method does, in one line (the web form shows the chosen method's).
METHOD_HELP: dict[str, str] = {
    "aligned_head": "A linear head on the image features, aligned with the tags' text embeddings; fast and the best "
    "measured on validation.",
    "prompt_alignment": "Learns prompt vectors for the text encoder, aligned with the candidate sets; slower.",
    "coop": "Context optimisation: learned prompt context shared by all tags; slower, needs more items per tag.",
    "linear_probe": "A plain linear classifier on the image features, with a k-nearest-neighbour vote.",
    "zero_shot": "The tags' text embeddings as they are, no prompt learned: a quick baseline.",
}
#: The PLL losses (ml/losses/), canonical names, in the order the web form offers them.
LOSSES: tuple[str, ...] = ("rc", "cc", "pico", "cavl", "lws", "plcr", "naive")
#: Other names ml accepts for the same objectives (PRODEN is RC, CRDPLL is PLCR); the API offers the canonical one.
LOSS_ALIASES: dict[str, str] = {"proden": "rc", "crdpll": "plcr"}

#: The alignment teacher's mixing modes (ml/align.py).
MIX_MODES: tuple[str, ...] = ("none", "constant", "ramp", "trust")
#: Where the class token goes in a learned prompt.
CLASS_TOKEN_POSITIONS: tuple[str, ...] = ("end", "middle", "front")
PRECISIONS: tuple[str, ...] = ("fp32", "amp")
#: Where a job runs (docs/deploy.md, Queues and devices).
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")

# --- job parameters: bounds and defaults -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A numeric job parameter: whole number or not, its default (None: the method's, or the server's) and its bounds
    in JSON Schema's words (``ge``/``gt``/``le``/``lt``), plus the one line the web form shows beside it ("" when it
    shows none)."""

    integer: bool
    default: int | float | None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    help: str = ""

    def bounds(self) -> dict[str, float]:
        return {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt)) if v is not None}


def _whole(default: int | None, **kw) -> Param:
    return Param(True, default, **kw)


def _real(default: float | None, **kw) -> Param:
    return Param(False, default, **kw)


#: Every numeric job parameter (``POST /datasets/{id}/jobs``; ml's TrainConfig has the same defaults, a contract test).
PARAMS: dict[str, Param] = {
    "epochs": _whole(None, ge=1, le=1000, help="Passes over the training items; empty: the method's default."),
    "batch_size": _whole(32, ge=1, le=4096, help="Items per training step."),
    "lr": _real(None, gt=0, le=100, help="Learning rate; empty: the method's default."),
    "momentum": _real(0.9, ge=0, lt=1),
    "weight_decay": _real(5e-4, ge=0, le=1),
    "n_ctx": _whole(16, ge=1, le=64),
    "mix_alpha": _real(0.5, ge=0, le=1),
    "prior_strength": _real(None, ge=0, le=1e6),
    "graph_k": _whole(10, ge=1, le=200),
    "graph_weight": _real(None, ge=0, lt=1),
    "knn_k": _whole(10, ge=1, le=200),
    "knn_tau": _real(0.5, gt=0, le=1),
    "handcrafted_mix": _real(None, ge=0, le=1),
    "shots": _whole(None, ge=1, le=100_000, help="At most this many training items per class; empty: every item."),
    "views": _whole(None, ge=1, le=64),
    "seed": _whole(1, ge=0, le=2**31 - 1, help="Fixes the random choices, so a rerun gives the same model."),
}

#: The web form's line beside the loss field (the method's line names the method ``auto`` stands for).
LOSS_HELP = "How the candidate sets are learned from; empty: the method's measured best."

# --- preprocess.json -------------------------------------------------------------------------------------------------

#: The fixed part of ``preprocess.json``: the eval preprocessing of ``ml.features`` (RGB first, then open_clip's eval
#: transform) in words a user can reimplement. ml writes it (``ml.backbone.PreprocessConfig.to_dict``), the API reads
#: it (``app.imaging.PreprocessConfig``) and the export's predict.py follows it.
PREPROCESS_STEPS: dict = {
    "color": "RGB",
    "steps": [
        "decode the image and convert it to RGB (Pillow convert('RGB'); EXIF orientation is not applied)",
        "resize so that the shortest side is image_size, the other side int(image_size * long / short), "
        "with the interpolation filter (Pillow)",
        "centre-crop image_size x image_size, offsets int(round((h - image_size) / 2)) and likewise for w",
        "float32 pixels / 255, layout (3, image_size, image_size) RGB",
        "normalise each channel: (x - mean) / std in float32",
        "stack into a (batch, 3, image_size, image_size) float32 input named 'image'",
    ],
    "layout": "NCHW",
    "dtype": "float32",
    "scale": 255,
    "input": "image",
    "output": "logits",
    "scores": "softmax over the logits (over the chosen candidates only, renormalised, when restricted)",
}
