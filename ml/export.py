"""Deployable classifier: image -> logits over the class names, in two parts.

    logits = s · normalise(g(image)) C^T (+ b)

g is the frozen open_clip image encoder, C the fixed (K, D) class matrix (learned text features, or the folded
linear probe with s = 1 and its bias b).

- **The image tower** (:func:`export_tower`): ``tower.onnx``, image -> ``normalise(g(image))`` (input "image",
  output "features": (B, D) float32, unit length), the same file for every model of a backbone, and ``tower.json``
  (:func:`tower_info`) naming it by a content address: the backbone id, a sha256 of the tower's weights, the
  preprocessing and the export settings. The worker exports it only when that address is not stored yet.
- **The head** (:func:`export_head`): ``head.npz`` (:data:`HEAD_ARRAYS`: C, b, s; a few KB to a few MB), with
  classes.json (names, in logit order) and preprocess.json (`PreprocessConfig.to_dict()`: convert to RGB, resize the
  shortest side to image_size with `interpolation`, centre-crop image_size, scale to [0, 1], subtract mean, divide
  by std; input layout (B, 3, S, S) float32 RGB; every step also in words under "steps"). Applying it is
  ``features @ (s·C)^T + b`` in float32 (the API's ``app.towers.Head`` and the export's predict.py).

:func:`export_classifier` writes both as one ``model.onnx`` (input "image", output "logits"): the layout every model
had before towers were shared, and the reference the two-part scores are tested against.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
import weakref
import zipfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.backbone import Backbone, PreprocessConfig
from ml.files import atomic_path, atomic_write_bytes

OPSET = 17

#: Bump when the tower's graph changes meaning (its inputs, outputs or what they hold): a new content address.
TOWER_FORMAT = 1
TOWER_INPUT = "image"
TOWER_OUTPUT = "features"
#: The arrays of head.npz, in this order (``app.towers`` reads the same names; tests/test_contracts.py ties them).
HEAD_ARRAYS = ("class_features", "bias", "logit_scale")


class ImageClassifier(nn.Module):
    """Frozen image encoder + fixed class matrix + logit scale (+ optional bias)."""

    def __init__(
        self, visual: nn.Module, class_features: torch.Tensor, logit_scale: float, bias: torch.Tensor | None = None
    ):
        super().__init__()
        self.visual = visual
        self.register_buffer("class_features", class_features.detach().float().clone())  # [K, D]
        self.register_buffer("scale", torch.tensor(float(logit_scale)))
        self.register_buffer("bias", (bias if bias is not None else torch.zeros(len(class_features))).float().clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = F.normalize(self.visual(image).float(), dim=-1)  # [B, D]
        return self.scale * f @ self.class_features.T + self.bias  # [B, K]


class ImageTower(nn.Module):
    """The part every model of a backbone shares: image -> unit-length features (B, D) float32."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(image).float(), dim=-1)


def build_classifier(
    backbone: Backbone, class_features: torch.Tensor, logit_scale: float, class_bias: torch.Tensor | None = None
) -> ImageClassifier:
    """The torch module that `export_classifier` writes (CPU, eval, no grad)."""
    assert class_features.dim() == 2 and class_features.shape[1] == backbone.embed_dim, (
        f"class_features {tuple(class_features.shape)} do not match the backbone dimension {backbone.embed_dim}"
    )
    visual = backbone.model.visual
    clf = ImageClassifier(visual, class_features.cpu(), logit_scale, None if class_bias is None else class_bias.cpu())
    return clf.eval()


@contextmanager
def _no_fastpath():
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX symbolic
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_onnx(module: nn.Module, size: int, path: str | Path, output: str) -> None:
    """``module`` (input "image" (B, 3, size, size) -> ``output`` (B, ...), dynamic batch) to ONNX at ``path``,
    atomically, on the device of its parameters or buffers."""
    device = next(itertools.chain(module.parameters(), module.buffers()), torch.empty(0)).device
    dummy = torch.zeros(2, 3, size, size, device=device)
    with atomic_path(path) as tmp, _no_fastpath(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: expected
        torch.onnx.export(
            module,
            (dummy,),
            str(tmp),
            input_names=[TOWER_INPUT],
            output_names=[output],
            dynamic_axes={TOWER_INPUT: {0: "batch"}, output: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # TorchScript exporter: no onnxscript dependency, handles timm and open_clip towers
        )


def _check_head(class_features: torch.Tensor, classnames: Sequence[str]) -> None:
    if len(classnames) != class_features.shape[0]:
        raise ValueError(f"{len(classnames)} class names for {class_features.shape[0]} class features")


def _side_files(out: Path, classnames: Sequence[str], preprocess: PreprocessConfig) -> dict[str, Path]:
    paths = {"classes": out / "classes.json", "preprocess": out / "preprocess.json"}
    atomic_write_bytes(paths["classes"], json.dumps(list(classnames), ensure_ascii=False, indent=1).encode())
    atomic_write_bytes(paths["preprocess"], json.dumps(preprocess.to_dict(), indent=1).encode())
    return paths


def export_classifier(
    backbone: Backbone,
    class_features: torch.Tensor,
    logit_scale: float,
    classnames: Sequence[str],
    out_dir: str | Path,
    *,
    class_bias: torch.Tensor | None = None,
) -> dict[str, Path]:
    """Write model.onnx (input "image": float32 (B, 3, S, S) preprocessed; output "logits": (B, K)),
    classes.json and preprocess.json into out_dir; return their paths.

    class_bias: the linear probe's (K,) bias (`TrainResult.class_bias`); None for prompt-based class features.
    """
    _check_head(class_features, classnames)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clf = build_classifier(backbone, class_features, logit_scale, class_bias)
    clf = clf.to(next(clf.visual.parameters()).device)
    paths = {"model": out / "model.onnx"}
    export_onnx(clf, backbone.preprocess_cfg.image_size, paths["model"], "logits")
    return {**paths, **_side_files(out, classnames, backbone.preprocess_cfg)}


# --- the shared tower ----------------------------------------------------------------------------------------

_weights_sha: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def weights_sha256(module: nn.Module) -> str:
    """sha256 over the module's state (names, dtypes, shapes and bytes, in name order); memoised per module (a
    frozen backbone's weights never change; a worker hashes its tower once)."""
    cached = _weights_sha.get(module)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    _weights_sha[module] = digest = h.hexdigest()
    return digest


def tower_info(backbone: Backbone) -> dict:
    """``tower.json``: what the tower is and its content address, sha256 of the canonical JSON of everything that
    makes its bytes (backbone id, weights sha256, preprocessing parameters, export settings)."""
    named = {
        "format": TOWER_FORMAT,
        "backbone": backbone.id,
        "weights_sha256": weights_sha256(backbone.model.visual),
        "preprocess": asdict(backbone.preprocess_cfg),
        "export": {
            "exporter": "torch.onnx (TorchScript)",
            "torch": torch.__version__,
            "opset": OPSET,
            "input": TOWER_INPUT,
            "output": TOWER_OUTPUT,
            "output_normalised": True,
            "dtype": "float32",
        },
    }
    address = hashlib.sha256(json.dumps(named, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"address": address, **named, "embed_dim": backbone.embed_dim}


def tower_address(backbone: Backbone) -> str:
    """The tower's content address (:func:`tower_info`): equal for every model of this backbone and settings."""
    return tower_info(backbone)["address"]


def export_tower(backbone: Backbone, out_dir: str | Path) -> dict[str, Path]:
    """Write tower.onnx (input "image": float32 (B, 3, S, S) preprocessed; output "features": (B, D) unit-length
    float32) and tower.json (:func:`tower_info`) into out_dir; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"tower": out / "tower.onnx", "info": out / "tower.json"}
    tower = ImageTower(backbone.model.visual).eval()
    export_onnx(tower, backbone.preprocess_cfg.image_size, paths["tower"], TOWER_OUTPUT)
    atomic_write_bytes(paths["info"], (json.dumps(tower_info(backbone), indent=1, sort_keys=True) + "\n").encode())
    return paths


# --- a model's head ------------------------------------------------------------------------------------------


def head_arrays(
    class_features: torch.Tensor, logit_scale: float, class_bias: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """The head as float32 arrays by :data:`HEAD_ARRAYS` name: (K, D) class matrix, (K,) bias, () logit scale."""
    c = class_features.detach().float().cpu().numpy()
    b = np.zeros(len(c), np.float32) if class_bias is None else class_bias.detach().float().cpu().numpy()
    values = (np.ascontiguousarray(c), np.ascontiguousarray(b), np.asarray(float(logit_scale), dtype=np.float32))
    return dict(zip(HEAD_ARRAYS, values, strict=True))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed timestamps: the same arrays give the same bytes (a re-run stores nothing twice)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)  # 0-d stays 0-d


def export_head(
    class_features: torch.Tensor,
    logit_scale: float,
    classnames: Sequence[str],
    preprocess: PreprocessConfig,
    out_dir: str | Path,
    *,
    class_bias: torch.Tensor | None = None,
) -> dict[str, Path]:
    """Write head.npz (:func:`head_arrays`), classes.json and preprocess.json into out_dir; return their paths."""
    _check_head(class_features, classnames)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"head": out / "head.npz"}
    write_npz(paths["head"], head_arrays(class_features, logit_scale, class_bias))
    return {**paths, **_side_files(out, classnames, preprocess)}
