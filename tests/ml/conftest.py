"""Tiny random-init open_clip models registered for the ml tests (no download, no network).

* `tiny_native`: ViT image tower + native CLIP `TextTransformer` (causal mask, argmax/EOT pooling, CLIP BPE).
* `tiny_hf`: the same image tower + a Hugging Face text tower (`HFTextEncoder`) built from a tiny BERT folder
  written here with transformers (word-piece vocab of letters, mean pooling, padding masked).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_VISION = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
NATIVE_NAME = "tagsift-tiny-native"
HF_NAME = "tagsift-tiny-hf"
CLASSNAMES = ("cat", "dog", "airplane", "truck", "bird")


def _bert_folder(root: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = root / "tiny-bert"
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    words = ["photo", "of", "the", "a", "x", "cat", "dog", "airplane", "truck", "bird", "type", "pet"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", *letters, *[f"##{c}" for c in letters]]
    vocab += [w for w in words if w not in vocab]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(folder)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_configs(tmp_path_factory) -> dict[str, Path]:
    """Register both tiny configs with open_clip; returns {kind: config json path}."""
    import open_clip

    root = tmp_path_factory.mktemp("tiny_models")
    native = {
        "embed_dim": 24,
        "vision_cfg": TINY_VISION,
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    bert = _bert_folder(root)
    hf = {
        "embed_dim": 24,
        "vision_cfg": TINY_VISION,
        "text_cfg": {
            "hf_model_name": str(bert),
            "hf_tokenizer_name": str(bert),
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",
            "context_length": 32,
        },
    }
    paths = {}
    for kind, name, cfg in (("native", NATIVE_NAME, native), ("hf", HF_NAME, hf)):
        p = root / f"{name}.json"
        p.write_text(json.dumps(cfg))
        open_clip.add_model_config(p)
        paths[kind] = p
    return paths


@pytest.fixture(scope="session")
def tiny_native(tiny_configs):
    from ml.backbone import load_backbone

    return load_backbone(NATIVE_NAME)


@pytest.fixture(scope="session")
def tiny_hf(tiny_configs):
    from ml.backbone import load_backbone

    return load_backbone(HF_NAME)


@pytest.fixture(params=["native", "hf"])
def tiny_backbone(request, tiny_native, tiny_hf):
    return tiny_native if request.param == "native" else tiny_hf


# --- the real reference backbone and CIFAR-10 (built / provided by others; skipped when absent) -------------------

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_CACHE_DIR = ROOT / "var" / "test-models"  # shared with tests/ml/reference_fixtures.py
CIFAR10_ARCHIVE = Path("/work/shared/data/cifar10-jpg.tar.gz")


@pytest.fixture(scope="session")
def reference_backbone():
    """`load_backbone("reference")`, built into var/test-models on first use; skips if its parts are missing."""
    import importlib.util

    if importlib.util.find_spec("ml.reference") is None:
        pytest.skip("ml.reference (the reference backbone builder) is absent")
    from ml.backbone import load_backbone
    from ml.reference import ReferenceBuildError, reference_parts

    try:
        reference_parts()
    except ReferenceBuildError as e:
        pytest.skip(f"reference backbone packages unavailable: {e}")
    REFERENCE_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return load_backbone("reference", cache_dir=REFERENCE_CACHE_DIR)


@pytest.fixture(scope="session")
def cifar10_archive() -> Path:
    if not CIFAR10_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR10_ARCHIVE}")
    return CIFAR10_ARCHIVE
