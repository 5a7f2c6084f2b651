"""Deployable classifier: image -> logits over the class names, exported to ONNX.

    logits = s · normalise(g(image)) C^T (+ b)

g is the frozen open_clip image encoder, C the fixed (K, D) class matrix (learned text features, or the folded
linear probe with s = 1 and its bias b). Written next to it: classes.json (names, in logit order) and
preprocess.json (`PreprocessConfig.to_dict()`: convert to RGB, resize the shortest side to image_size with
`interpolation`, centre-crop image_size, scale to [0, 1], subtract mean, divide by std; input layout (B, 3, S, S)
float32 RGB; every step also in words under "steps"). The API adds predict.py to the exported zip.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ml.backbone import Backbone
from ml.files import atomic_path

OPSET = 17


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
    if len(classnames) != class_features.shape[0]:
        raise ValueError(f"{len(classnames)} class names for {class_features.shape[0]} class features")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clf = build_classifier(backbone, class_features, logit_scale, class_bias)
    device = next(clf.visual.parameters()).device
    clf = clf.to(device)
    size = backbone.preprocess_cfg.image_size
    dummy = torch.zeros(2, 3, size, size, device=device)
    paths = {"model": out / "model.onnx", "classes": out / "classes.json", "preprocess": out / "preprocess.json"}
    with atomic_path(paths["model"]) as tmp:
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX symbolic
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants: expected
                torch.onnx.export(
                    clf,
                    (dummy,),
                    str(tmp),
                    input_names=["image"],
                    output_names=["logits"],
                    dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,  # TorchScript exporter: no onnxscript dependency, handles timm and open_clip towers
                )
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    paths["classes"].write_text(json.dumps(list(classnames), ensure_ascii=False, indent=1))
    paths["preprocess"].write_text(json.dumps(backbone.preprocess_cfg.to_dict(), indent=1))
    return paths
