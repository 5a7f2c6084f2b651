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
from ml.export import build_classifier, export_classifier, tower_address
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

    from bench.data import load_cifar10
    from ml.prompts import handcrafted_class_features
    from ml.text_encoder import TextEncoder

    test = load_cifar10(cifar10_archive, "test", per_class=10, seed=3)
    pixels = torch.stack([reference_backbone.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in test.images])
    te = TextEncoder(reference_backbone.model)
    c = handcrafted_class_features(te, reference_backbone.tokenizer, test.classnames, ("a photo of a {}.",), "cpu")
    ref = _parity(reference_backbone, c, 100.0, test.classnames, tmp_path, pixels=pixels)
    assert float((torch.from_numpy(ref).argmax(1) == test.labels).float().mean()) > 0.2  # a real classifier


# --- the shared tower and a model's head (issue 15, item 3) ---------------------------------------------------


def _tower_head_parity(backbone, class_features, scale, classnames, out_dir, bias=None, pixels=None):
    """tower.onnx (ONNX Runtime) + head.npz (``app.towers.Head``, NumPy), and the merged model the export makes,
    against the torch classifier and the one-file model.onnx: logits within 1e-4, top-1 equal."""
    import onnxruntime as ort

    from app.towers import Head, merged_suffix
    from ml.export import export_head, export_tower

    tower = export_tower(backbone, out_dir / "tower")
    head = export_head(class_features, scale, classnames, backbone.preprocess_cfg, out_dir / "head", class_bias=bias)
    one_file = export_classifier(backbone, class_features, scale, classnames, out_dir / "one", class_bias=bias)
    info = json.loads(tower["info"].read_text())
    assert info["address"] == tower_address(backbone) and info["embed_dim"] == backbone.embed_dim
    assert json.loads(head["classes"].read_text()) == list(classnames)
    assert head["preprocess"].read_bytes() == one_file["preprocess"].read_bytes()
    s = backbone.preprocess_cfg.image_size
    if pixels is None:
        pixels = torch.randn(100, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = build_classifier(backbone, class_features, scale, bias)(pixels).numpy()
    opts = {"providers": ["CPUExecutionProvider"]}
    tower_sess = ort.InferenceSession(str(tower["tower"]), **opts)
    h = Head.from_npz(head["head"].read_bytes())
    merged = ort.InferenceSession(tower["tower"].read_bytes() + merged_suffix(h), **opts)
    old = ort.InferenceSession(str(one_file["model"]), **opts)
    batches = [pixels[i : i + 25].numpy() for i in range(0, len(pixels), 25)]
    feats = np.concatenate([tower_sess.run(["features"], {"image": b})[0] for b in batches])
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)  # unit length
    for got in (
        h.logits(feats),
        np.concatenate([merged.run(["logits"], {"image": b})[0] for b in batches]),
        np.concatenate([old.run(["logits"], {"image": b})[0] for b in batches]),
    ):
        assert got.shape == ref.shape == (len(pixels), len(classnames))
        assert np.abs(got - ref).max() < 1e-4
        assert (got.argmax(1) == ref.argmax(1)).all()
    return ref


def test_tower_and_head_parity_native_tower(tiny_native, tmp_path):
    ref = _tower_head_parity(tiny_native, _spread_classes(tiny_native, len(CLASSNAMES)), 100.0, CLASSNAMES, tmp_path)
    assert len(set(ref.argmax(1).tolist())) > 1


def test_tower_and_head_parity_linear_probe_bias(tiny_hf, tmp_path):
    a = torch.randn(len(CLASSNAMES), tiny_hf.embed_dim)
    _tower_head_parity(tiny_hf, a, 1.0, CLASSNAMES, tmp_path, bias=torch.randn(len(CLASSNAMES)))


def test_tower_address_names_the_backbone_weights_and_settings(tiny_native, tiny_hf, tmp_path):
    """One address per (backbone, weights, preprocessing, export settings); the export is byte-for-byte the same
    again, so the blob is stored once even when two workers race."""
    import dataclasses

    from ml.export import export_tower, tower_info

    a = tower_address(tiny_native)
    assert a == tower_address(tiny_native) and len(a) == 64
    # tiny_hf has the same image tower config, but its own id (a different backbone): another address
    assert tower_address(tiny_hf) != a
    other_pre = dataclasses.replace(
        tiny_native, preprocess_cfg=dataclasses.replace(tiny_native.preprocess_cfg, mean=(0.5,) * 3)
    )
    assert tower_address(other_pre) != a
    info = tower_info(tiny_native)
    assert (
        info["backbone"] == tiny_native.id and info["export"]["opset"] == 17 and info["export"]["output"] == "features"
    )
    first = export_tower(tiny_native, tmp_path / "a")["tower"].read_bytes()
    assert export_tower(tiny_native, tmp_path / "b")["tower"].read_bytes() == first


def test_weights_hash_follows_the_weights(tiny_native):
    import copy

    from ml.export import weights_sha256

    visual = copy.deepcopy(tiny_native.model.visual)
    before = weights_sha256(visual)
    changed = copy.deepcopy(visual)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert weights_sha256(changed) != before and weights_sha256(copy.deepcopy(visual)) == before


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ml.reference") is None, reason="ml.reference (reference backbone) absent")
def test_tower_and_head_parity_reference_backbone(reference_backbone, cifar10_archive, tmp_path):
    """The reference backbone's tower + a zero-shot head on 100 real CIFAR-10 photos, against torch and the
    one-file model.onnx."""
    import io

    from PIL import Image

    from bench.data import load_cifar10
    from ml.prompts import handcrafted_class_features
    from ml.text_encoder import TextEncoder

    test = load_cifar10(cifar10_archive, "test", per_class=10, seed=3)
    pixels = torch.stack([reference_backbone.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in test.images])
    te = TextEncoder(reference_backbone.model)
    c = handcrafted_class_features(te, reference_backbone.tokenizer, test.classnames, ("a photo of a {}.",), "cpu")
    ref = _tower_head_parity(reference_backbone, c, 100.0, test.classnames, tmp_path, pixels=pixels)
    assert float((torch.from_numpy(ref).argmax(1) == test.labels).float().mean()) > 0.2
