"""Per-process runtime of a worker child: device choice and the loaded backbone, both lazy.

Nothing here runs at import time. CUDA is only touched by :func:`pick_device`, which runs inside the process that
executes the task (a prefork child, or the solo worker itself), never in the prefork parent before it forks
(pytorch #68861: a forked child cannot use CUDA once the parent initialised it). ``torch`` and ``ml`` are imported
inside the functions so that importing ``worker.celery_app`` / ``worker.tasks`` stays light.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ml.backbone import Backbone

log = logging.getLogger(__name__)

_lock = threading.Lock()
_backbones: dict[tuple[str, str, str, bool], Backbone] = {}


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


#: "cpu" or "gpu": the kind of worker this process is (`tagsift worker --device`), set before the worker starts so
#: that prefork children inherit it; None (a job run outside `tagsift worker`, e.g. in tests): from TAGSIFT_DEVICE.
_worker_kind: str | None = None

#: Device files present on a host with an NVIDIA driver (no torch needed to look).
NVIDIA_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/gpus")


def set_worker_kind(kind: str) -> None:
    global _worker_kind
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"worker kind {kind!r}: expected 'cpu' or 'gpu'")
    _worker_kind = kind


_live = False


def set_live_process() -> None:
    """This process is the live refit consumer (``tagsift live-worker``): no reaper, webhook sender or health file
    of its own (its parent ``tagsift worker`` has them)."""
    global _live
    _live = True


def is_live_process() -> bool:
    return _live


def declared_worker_kind() -> str | None:
    """What `tagsift worker` set (None outside it); never probes CUDA."""
    return _worker_kind


def resolve_worker_kind(requested: str | None, device_setting: str) -> str:
    """'cpu' or 'gpu' for `tagsift worker --device REQUESTED` (None: from TAGSIFT_DEVICE), in the worker's parent.

    ``auto`` asks torch in a separate process whether CUDA is usable, and only on a host with the NVIDIA driver's
    device files: the parent itself never imports torch nor touches CUDA (its prefork children must be free to).
    """
    requested = (requested or "").strip().lower() or None
    if requested is None:
        setting = (device_setting or "auto").strip().lower()
        requested = "gpu" if setting.startswith("cuda") else setting
    if requested in ("cpu", "gpu"):
        return requested
    if requested != "auto":
        raise ValueError(f"worker device {requested!r}: expected 'auto', 'cpu' or 'gpu'")
    if not any(Path(p).exists() for p in NVIDIA_DEVICE_FILES):
        return "cpu"
    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
    try:
        usable = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        usable = False
    return "gpu" if usable else "cpu"


def worker_kind(device_setting: str) -> str:
    """The kind of this worker: what `tagsift worker` decided, else TAGSIFT_DEVICE ('auto': is CUDA usable here)."""
    if _worker_kind is not None:
        return _worker_kind
    return "gpu" if pick_device(device_setting) != "cpu" else "cpu"


def job_torch_device(device_setting: str) -> str:
    """The torch device a job runs on in this worker: 'cpu' on a CPU worker; on a GPU worker TAGSIFT_DEVICE when it
    names a CUDA device, else 'cuda' (an error that says so when CUDA is not usable)."""
    if worker_kind(device_setting) == "cpu":
        return "cpu"
    setting = (device_setting or "auto").strip().lower()
    try:
        return pick_device(setting if setting.startswith("cuda") else "cuda")
    except RuntimeError as exc:
        raise RuntimeError(
            "this is a GPU worker (`tagsift worker --device gpu`, or TAGSIFT_DEVICE=cuda) and consumes the GPU queue,"
            f" but no CUDA device is usable here ({exc}). Run GPU workers on a host with a GPU (docker compose"
            " --profile gpu), or start this one with --device cpu."
        ) from exc


def takes(kind: str, job_device: str) -> bool:
    """Whether a worker of ``kind`` runs a job asked for ``job_device`` ('auto' jobs run anywhere)."""
    return job_device == "auto" or job_device == kind


def get_backbone(name: str, *, device: str, cache_dir: Path, offline: bool = False) -> Backbone:
    """The frozen backbone for ``name`` on ``device``, loaded once per process and kept (keyed by all three).

    Raises ``ml.backbone.BackboneLoadError`` (message: which backbone, why, how to fix) when it cannot be built.
    """
    key = (name, device, str(cache_dir), offline)
    with _lock:
        backbone = _backbones.get(key)
        if backbone is None:
            from ml.backbone import load_backbone

            log.info("loading backbone %s on %s", name, device)
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            backbone = load_backbone(name, device=device, cache_dir=cache_dir, offline=offline)
            _backbones[key] = backbone
        return backbone


def image_encoder(backbone: Backbone, choice: str, cache_dir: Path, storage=None):
    """What encodes a job's images (``TAGSIFT_ENCODER``): ``backbone`` itself (torch), or the backbone with its
    image tower in ONNX Runtime (``ml.ort_encoder``): ``onnxruntime``, or ``auto`` on a CPU backbone when
    onnxruntime imports. The tower's .onnx is kept in ``cache_dir/towers/<address>/``, copied from ``storage``'s
    stored tower when there is one (``worker.model_store``), else exported once. ``auto`` falls back to torch (with a
    warning) when the tower cannot be exported or loaded; an explicit ``onnxruntime`` raises."""
    choice = (choice or "auto").strip().lower()
    if choice == "torch" or (choice == "auto" and backbone.device.type != "cpu"):
        return backbone
    from ml import ort_encoder

    if choice == "auto" and not ort_encoder.available():
        return backbone
    fetched: list[bool] = []

    def fetch(address: str, path: Path) -> bool:
        fetched.append(storage is not None and _stored_tower_onnx(storage, address, path))
        return fetched[-1]

    try:
        encoder = ort_encoder.ort_encoder(backbone, cache_dir, fetch)
    except Exception as exc:
        if choice != "auto":
            raise
        log.warning("backbone %s: ONNX Runtime encoder unavailable (%s); encoding with torch", backbone.id, exc)
        return backbone
    if storage is not None and fetched and not fetched[-1]:  # exported here: stored with the towers at once
        from worker.model_store import store_tower

        try:
            store_tower(storage, backbone, encoder.onnx_path.parent)
        except Exception as exc:  # the job stores it with its model later
            log.warning("tower of %s: not stored yet (%s)", backbone.id, exc)
    return encoder


def _stored_tower_onnx(storage, address: str, path: Path) -> bool:
    """Copy the store's tower.onnx of ``address`` to ``path``; False when none is stored (or it cannot be read)."""
    import json
    import shutil

    from worker.model_store import ONNX_SHA, stored_tower

    try:
        info = stored_tower(storage, address)
        if info is None:
            return False
        [blob] = storage.fetch([json.loads(info)[ONNX_SHA]])
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}")
        shutil.copyfile(blob, tmp)
        tmp.replace(path)
        return True
    except Exception as exc:  # the store is away: export it here instead
        log.warning("tower %s: not copied from the store (%s); exporting it", address[:16], exc)
        return False


def clear() -> None:
    """Forget the cached backbones (tests)."""
    with _lock:
        _backbones.clear()
