"""Backbone naming, loading (config JSON, local checkpoint), freezing and load errors."""

from __future__ import annotations

import json

import pytest
import torch

from ml.backbone import BackboneLoadError, BackboneSpec, PreprocessConfig, load_backbone, parse_backbone
from tests.ml.conftest import NATIVE_NAME


def test_parse_backbone_forms():
    assert parse_backbone("ViT-B-32") == BackboneSpec("ViT-B-32")
    assert parse_backbone("ViT-B-32:laion2b_s34b_b79k") == BackboneSpec("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_backbone("RN50:/ckpt/model.safetensors") == BackboneSpec("RN50", "/ckpt/model.safetensors")
    spec = parse_backbone("/x/my-model.json:/x/ckpt.pt")
    assert spec == BackboneSpec("my-model", "/x/ckpt.pt", "/x/my-model.json")
    assert parse_backbone("hf-hub:org/model").model_name == "hf-hub:org/model"
    with pytest.raises(ValueError, match="nothing after"):
        parse_backbone("ViT-B-32:")


def test_preprocess_config_roundtrip():
    cfg = PreprocessConfig(224, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_loaded_backbone_is_frozen_and_reproducible(tiny_backbone):
    m = tiny_backbone.model
    assert not m.training
    assert all(not p.requires_grad for p in m.parameters())
    again = load_backbone(tiny_backbone.spec)  # random init is seeded: same weights, so the id is a valid cache key
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(tiny_backbone.encode_image(x), again.encode_image(x))
    assert tiny_backbone.id == again.id


def test_local_checkpoint_and_config_json(tiny_configs, tiny_native, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    sd = {k: v + 0.01 for k, v in tiny_native.model.state_dict().items()}  # different weights than random init
    torch.save(sd, ckpt)
    bb = load_backbone(f"{tiny_configs['native']}:{ckpt}")
    assert bb.spec.config_path == str(tiny_configs["native"]) and bb.spec.model_name == NATIVE_NAME
    assert "ckpt-" in bb.id and bb.id != tiny_native.id
    assert torch.allclose(bb.model.visual.conv1.weight, sd["visual.conv1.weight"])


def test_load_errors_name_backbone_cause_and_remedy(tiny_configs, tmp_path):
    with pytest.raises(BackboneLoadError) as e:
        load_backbone(f"{NATIVE_NAME}:{tmp_path / 'missing.safetensors'}")
    msg = str(e.value)
    assert NATIVE_NAME in msg and "does not exist" in msg and "local checkpoint" in msg
    with pytest.raises(BackboneLoadError) as e:  # unknown tag: open_clip cannot resolve it (or cannot download)
        load_backbone(f"{NATIVE_NAME}:no_such_tag_xyz")
    assert NATIVE_NAME in str(e.value) and ".safetensors" in str(e.value)
    with pytest.raises(BackboneLoadError, match="cache_dir"):
        load_backbone("reference")
