"""Per-process runtime of a worker child: device choice and the loaded backbone, both lazy.

Nothing here runs at import time. CUDA is only touched by :func:`pick_device`, which runs inside the process that
executes the task (a prefork child, or the solo worker itself), never in the prefork parent before it forks
(pytorch #68861: a forked child cannot use CUDA once the parent initialised it). ``torch`` and ``ml`` are imported
inside the functions so that importing ``worker.celery_app`` / ``worker.tasks`` stays light.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ml.backbone import Backbone

log = logging.getLogger(__name__)

_lock = threading.Lock()
_backbones: dict[tuple[str, str, str], Backbone] = {}


def pick_device(setting: str) -> str:
    """'auto' -> 'cuda' when a CUDA device is usable, else 'cpu'; an explicit 'cpu' / 'cuda[:N]' is kept.

    An explicit CUDA setting on a machine without CUDA raises a ``RuntimeError`` that says so (the job fails
    with that message instead of silently training on CPU).
    """
    setting = (setting or "auto").strip().lower()
    if setting == "cpu":
        return "cpu"
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"TAGSIFT_DEVICE={setting} but no CUDA device is available to this worker; "
                "set TAGSIFT_DEVICE=auto or cpu, or run the worker with a GPU (docker compose --profile gpu)."
            )
        return setting
    raise ValueError(f"TAGSIFT_DEVICE={setting!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def get_backbone(name: str, *, device: str, cache_dir: Path) -> Backbone:
    """The frozen backbone for ``name`` on ``device``, loaded once per process and kept (keyed by all three).

    Raises ``ml.backbone.BackboneLoadError`` (message: which backbone, why, how to fix) when it cannot be built.
    """
    key = (name, device, str(cache_dir))
    with _lock:
        backbone = _backbones.get(key)
        if backbone is None:
            from ml.backbone import load_backbone

            log.info("loading backbone %s on %s", name, device)
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            backbone = load_backbone(name, device=device, cache_dir=cache_dir)
            _backbones[key] = backbone
        return backbone


def clear() -> None:
    """Forget the cached backbones (tests)."""
    with _lock:
        _backbones.clear()
