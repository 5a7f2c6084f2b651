"""Image encoding with ONNX Runtime on the exported image tower (``ml.export.export_tower``): on a CPU several
times the rate of eager torch for the same features (unit length; cosine >= 0.9999 to torch's on real photos,
tests/ml/test_ort_encoder.py).

:func:`tower_onnx` gives the tower's file in a cache folder, keyed by its content address
(``ml.export.tower_address``), exported once (or copied from wherever the caller keeps towers, ``fetch``);
:func:`ort_encoder` wraps a backbone so that ``ml.features.encode_images`` runs the tower in an ONNX Runtime session
(one per file per process). Training, text features and GPUs stay with torch.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from ml.backbone import Backbone
from ml.export import TOWER_INPUT, TOWER_OUTPUT, export_tower, tower_address

_lock = threading.Lock()
_sessions: dict[tuple[str, int], object] = {}


def available() -> bool:
    """Whether onnxruntime can be imported here."""
    return importlib.util.find_spec("onnxruntime") is not None


def tower_onnx(backbone: Backbone, cache_dir: str | Path, fetch: Callable[[str, Path], bool] | None = None) -> Path:
    """``<cache_dir>/towers/<address>/tower.onnx`` of ``backbone``'s image tower: present, or ``fetch(address,
    path)`` placed it there (True), or exported now (once; the file appears atomically, whole)."""
    address = tower_address(backbone)
    path = Path(cache_dir) / "towers" / address / "tower.onnx"
    if path.is_file():
        return path
    with _lock:
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        if fetch is not None and fetch(address, path) and path.is_file():
            return path
        work = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
        try:
            exported = export_tower(backbone, work)
            exported["tower"].replace(path)
            exported["info"].replace(path.with_name("tower.json"))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path


def session(path: str | Path, threads: int = 0):
    """The ONNX Runtime CPU session of ``path``, created once per process (``threads`` 0: torch's thread count)."""
    import onnxruntime as ort

    threads = threads or torch.get_num_threads()
    key = (str(path), threads)
    with _lock:
        found = _sessions.get(key)
        if found is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            found = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            _sessions[key] = found
        return found


class OrtImageEncoder:
    """``backbone`` whose :meth:`encode_image` runs the ONNX tower; every other attribute is the backbone's (its id,
    preprocessing, model), so it goes wherever ``encode_images`` takes a backbone."""

    engine = "onnxruntime"

    def __init__(self, backbone: Backbone, onnx_path: str | Path, threads: int = 0):
        self.backbone = backbone
        self.onnx_path = Path(onnx_path)
        self.session = session(onnx_path, threads)

    def __getattr__(self, name: str):
        if name == "backbone":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.backbone, name)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed pixels -> (B, D) unit-length float32 CPU features."""
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([TOWER_OUTPUT], {TOWER_INPUT: x})[0])


def ort_encoder(
    backbone: Backbone, cache_dir: str | Path, fetch: Callable[[str, Path], bool] | None = None, threads: int = 0
) -> OrtImageEncoder:
    """``backbone`` encoding with ONNX Runtime (:func:`tower_onnx` in ``cache_dir``, :func:`session`)."""
    return OrtImageEncoder(backbone, tower_onnx(backbone, cache_dir, fetch), threads)
