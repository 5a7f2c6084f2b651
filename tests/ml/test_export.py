"""ONNX export: runtime logits equal torch within 1e-4 and top-1 agrees on 100 images."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ml.backbone import PreprocessConfig
from ml.export import build_classifier, export_classifier
from tests.ml.conftest import CLASSNAMES

CIFAR = Path("/work/shared/data/cifar10-jpg.tar.gz")


def _parity(backbone, class_features, scale, classnames, out_dir, bias=None, pixels=None):
    import onnxruntime as ort

    paths = export_classifier(backbone, class_features, scale, classnames, out_dir, class_bias=bias)
    assert json.loads(paths["classes"].read_text()) == list(classnames)
    assert PreprocessConfig.from_dict(json.loads(paths["preprocess"].read_text())) == backbone.preprocess_cfg
    s = backbone.preprocess_cfg.image_size
    if pixels is None:
        pixels = torch.randn(100, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = build_classifier(backbone, class_features, scale, bias)(pixels).numpy()
    sess = ort.InferenceSession(str(paths["model"]), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(["logits"], {"image": pixels[i : i + 25].numpy()})[0] for i in range(0, 100, 25)])
    assert got.shape == (100, len(classnames))
    assert np.abs(got - ref).max() < 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    return ref


def _spread_classes(backbone, k: int) -> torch.Tensor:
    """Class features along the directions where random images differ, so top-1 is not constant."""
    s = backbone.preprocess_cfg.image_size
    f = F.normalize(backbone.encode_image(torch.randn(200, 3, s, s, generator=torch.Generator().manual_seed(5))), dim=1)
    _, _, v = torch.pca_lowrank(f - f.mean(0), q=k, center=False)
    return F.normalize(v.T, dim=1)  # [k, D]


def test_onnx_parity_native_tower(tiny_native, tmp_path):
    ref = _parity(tiny_native, _spread_classes(tiny_native, len(CLASSNAMES)), 100.0, CLASSNAMES, tmp_path)
    assert len(set(ref.argmax(1).tolist())) > 1  # a non-degenerate classifier


def test_onnx_parity_linear_probe_bias(tiny_hf, tmp_path):
    a = torch.randn(len(CLASSNAMES), tiny_hf.embed_dim)
    b = torch.randn(len(CLASSNAMES))
    _parity(tiny_hf, a, 1.0, CLASSNAMES, tmp_path, bias=b)


def test_export_rejects_mismatched_names(tiny_native, tmp_path):
    with pytest.raises(ValueError, match="class names"):
        export_classifier(tiny_native, torch.randn(3, tiny_native.embed_dim), 1.0, ["a", "b"], tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ml.reference") is None, reason="ml.reference (reference backbone) absent")
def test_onnx_parity_reference_backbone(reference_backbone, cifar10_archive, tmp_path):
    """100 real CIFAR-10 test photos through the eval transform; class matrix = zero-shot text features."""
    import io

    from PIL import Image

    from ml.data import load_cifar10
    from ml.prompts import handcrafted_class_features
    from ml.text_encoder import TextEncoder

    test = load_cifar10(cifar10_archive, "test", per_class=10, seed=3)
    pixels = torch.stack([reference_backbone.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in test.images])
    te = TextEncoder(reference_backbone.model)
    c = handcrafted_class_features(te, reference_backbone.tokenizer, test.classnames, ("a photo of a {}.",), "cpu")
    ref = _parity(reference_backbone, c, 100.0, test.classnames, tmp_path, pixels=pixels)
    assert float((torch.from_numpy(ref).argmax(1) == test.labels).float().mean()) > 0.2  # a real classifier
