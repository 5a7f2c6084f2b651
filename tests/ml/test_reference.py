"""The offline reference backbone effnetlite0-minilm: image tower exactness, text alignment, cache, zero-shot."""

from __future__ import annotations

import io
import json
import os
import shutil
import time

import pytest
import torch

from tests.ml.reference_fixtures import *  # noqa: F403 - pytest fixtures

# Measured on the 2-core dev machine: fit R^2 0.2205 (16,000 prompt rows), mean class cosine 0.504.
MIN_R2 = 0.18
ZERO_SHOT_PER_CLASS = 20  # 200 CIFAR-10 test photos


def test_config_and_checkpoint_files(reference_build):
    from ml.reference import CONTEXT_LENGTH, REFERENCE_MODEL_NAME, reference_parts

    assert reference_build.config_path.name == f"{REFERENCE_MODEL_NAME}.json"
    cfg = json.loads(reference_build.config_path.read_text())
    minilm = str(reference_parts().minilm_dir)
    assert cfg["text_cfg"]["hf_model_name"] == minilm and cfg["text_cfg"]["hf_tokenizer_name"] == minilm
    assert cfg["text_cfg"]["context_length"] == CONTEXT_LENGTH
    assert cfg["vision_cfg"]["timm_model_name"] == "tf_efficientnet_lite0"
    assert reference_build.checkpoint_path.is_file()
    meta = json.loads((reference_build.config_path.parent / "build.json").read_text())
    assert meta["r2"] == pytest.approx(reference_build.r2)
    local = json.loads((reference_build.config_path.parent / "open_clip_config.json").read_text())
    assert local["model_cfg"] == cfg and local["preprocess_cfg"]["std"] == [0.229, 0.224, 0.225]


def test_image_tower_reproduces_package_efficientnet(reference_open_clip):
    from ml.reference import load_package_efficientnet

    model, _, _ = reference_open_clip
    net = load_package_efficientnet()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.encode_image(x)
        feats = net._avg_pooling(net.extract_features(x)).flatten(1)
        logits = net(x)
    assert ours.shape == (2, 1280)
    print(f"features max abs diff {(ours - feats).abs().max():.3g}")
    assert torch.allclose(ours, feats, atol=1e-5, rtol=0)
    ours_logits = ours @ net._fc.weight.T + net._fc.bias
    assert torch.allclose(ours_logits, logits, atol=1e-4, rtol=0)
    assert torch.equal(ours_logits.argmax(1), logits.argmax(1))


def test_text_projection_recovers_classifier_rows(reference_build, reference_open_clip):
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from ml.reference import LOGIT_SCALE, load_package_efficientnet

    print(f"ridge fit R^2 = {reference_build.r2:.4f}")
    assert MIN_R2 < reference_build.r2 < 1.0
    model, _, tokenizer = reference_open_clip
    assert float(model.logit_scale) == pytest.approx(LOGIT_SCALE)
    # encode_text (the path every user takes) must land near the classifier row of its class: from the prompt
    # "a photo of a {}." of every 4th ImageNet class, retrieve that class's classifier row among all 1000 rows.
    queries = torch.arange(0, 1000, 4)
    with torch.no_grad():
        text = model.encode_text(tokenizer([f"a photo of a {IMAGENET_CLASSNAMES[i]}." for i in queries]))
    text = torch.nn.functional.normalize(text, dim=-1)
    rows = torch.nn.functional.normalize(load_package_efficientnet()._fc.weight.detach(), dim=-1)
    cos = text @ rows.T
    top1 = float((cos.argmax(1) == queries).float().mean())
    diag = float(cos[torch.arange(len(queries)), queries].mean())
    print(f"text->classifier-row retrieval top-1 {top1:.3f} (chance 0.001), mean matched cosine {diag:.3f}")
    assert top1 > 0.3
    assert diag > 0.3


def test_second_build_reuses_cache(reference_build, reference_cache_dir):
    from ml.reference import build_reference_backbone

    t = time.perf_counter()
    again = build_reference_backbone(reference_cache_dir)
    elapsed = time.perf_counter() - t
    assert again.built is False
    assert again.r2 == reference_build.r2
    assert again.checkpoint_path == reference_build.checkpoint_path
    assert elapsed < 5.0, f"cached build took {elapsed:.1f} s"


def test_stale_minilm_path_rewrites_config_only(reference_build, tmp_path):
    from ml.reference import REFERENCE_MODEL_NAME, build_reference_backbone, reference_parts

    src = reference_build.config_path.parent
    dst = tmp_path / REFERENCE_MODEL_NAME
    dst.mkdir()
    for f in src.iterdir():
        if f.name.endswith(".safetensors"):
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)
        elif f.is_file():
            shutil.copy2(f, dst / f.name)
    cfg = json.loads((dst / reference_build.config_path.name).read_text())
    cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = "/nonexistent/minilm"
    (dst / reference_build.config_path.name).write_text(json.dumps(cfg))
    fixed = build_reference_backbone(tmp_path)
    assert fixed.built is False
    assert json.loads(fixed.config_path.read_text())["text_cfg"]["hf_model_name"] == str(reference_parts().minilm_dir)


def test_reference_spec_and_load_backbone(reference_build, reference_cache_dir):
    from ml.backbone import BackboneSpec, load_backbone
    from ml.reference import IMAGENET_MEAN, IMAGENET_STD, REFERENCE_MODEL_NAME, reference_spec

    spec = reference_spec(reference_cache_dir)
    assert spec == BackboneSpec(
        REFERENCE_MODEL_NAME, str(reference_build.checkpoint_path), str(reference_build.config_path)
    )
    backbone = load_backbone("reference", cache_dir=reference_cache_dir)
    assert backbone.embed_dim == 1280
    assert backbone.spec == spec
    # open_clip alone would fall back to the OpenAI CLIP mean/std; the reference needs ImageNet's.
    assert backbone.preprocess_cfg.mean == pytest.approx(IMAGENET_MEAN)
    assert backbone.preprocess_cfg.std == pytest.approx(IMAGENET_STD)
    assert backbone.preprocess_cfg.interpolation == "bicubic"


def test_zero_shot_cifar10_far_above_chance(reference_open_clip, cifar10_path):
    from PIL import Image

    from bench.data import CIFAR10_CLASSES, load_cifar10
    from ml.prompts import handcrafted_class_features
    from ml.text_encoder import TextEncoder

    model, preprocess, tokenizer = reference_open_clip
    test = load_cifar10(cifar10_path, "test", per_class=ZERO_SHOT_PER_CLASS, seed=0)
    classes = handcrafted_class_features(TextEncoder(model), tokenizer, CIFAR10_CLASSES, ("a photo of a {}.",), "cpu")
    feats = []
    with torch.no_grad():
        for i in range(0, len(test), 50):
            x = torch.stack([preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in test.images[i : i + 50]])
            feats.append(model.encode_image(x))
    pred = (torch.nn.functional.normalize(torch.cat(feats), dim=-1) @ classes.T).argmax(1)
    acc = float((pred == test.labels).float().mean())
    print(f"zero-shot CIFAR-10 top-1 {acc:.1%} on {len(test)} test photos ('a photo of a {{}}.', chance 10%)")
    assert acc > 0.30


def test_checkpoint_bytes_are_reproducible(tmp_path):
    """Equal weights give equal checkpoint bytes (the backbone id, and every cached feature, keys on them)."""
    from ml.reference import save_checkpoint

    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(3, 4, generator=g) for i in range(20)}
    state["count"] = torch.tensor(7)
    save_checkpoint(state, tmp_path / "a.safetensors")
    save_checkpoint(dict(reversed(list(state.items()))), tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
