"""app/towers.py without a server: the layouts, reading head.npz (and refusing what is not one), the head's
logits, and the protobuf that merges a head into a tower, checked by the onnx package and run by ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import pytest

from app.towers import Head, layout, merged_suffix


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _head_npz(k: int = 3, d: int = 4, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, d)).astype(np.float32)
    return _npz(class_features=c, bias=rng.normal(size=k).astype(np.float32), logit_scale=np.float32(12.5))


def test_layouts() -> None:
    assert layout({"tower.onnx": "a", "head.npz": "b", "classes.json": "c"}) == "tower"
    assert layout({"model.onnx": "a", "classes.json": "c"}) == "model"
    assert layout({"tower.onnx": "a", "model.onnx": "b", "head.npz": "c"}) == "tower"  # a tower model wins
    assert layout({"tower.onnx": "a"}) is None and layout({}) is None


def test_head_logits_are_the_classifier() -> None:
    head = Head.from_npz(_head_npz())
    assert (head.dim, head.classes) == (4, 3) and head.weight.dtype == np.float32
    rng = np.random.default_rng(1)
    f = rng.normal(size=(5, 4)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    with np.load(io.BytesIO(_head_npz())) as npz:
        want = 12.5 * f.astype(np.float64) @ npz["class_features"].T.astype(np.float64) + npz["bias"]
    assert np.abs(head.logits(f) - want).max() < 1e-5
    with pytest.raises(ValueError, match=r"takes \(B, 4\)"):
        head.logits(np.zeros((2, 5), np.float32))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not a NumPy .npz"),
        (b"not an npz", "not a NumPy .npz"),
        (b"PK\x03\x04 truncated zip", "not a NumPy .npz"),
        (_npz(class_features=np.zeros((3, 4)), bias=np.zeros(3)), "no logit_scale"),
        (_npz(class_features=np.zeros((3, 4)), bias=np.zeros(2), logit_scale=np.float32(1)), "expected (K, D)"),
        (_npz(class_features=np.zeros(4), bias=np.zeros(4), logit_scale=np.float32(1)), "expected (K, D)"),
        (_npz(class_features=np.array([object()]), bias=np.zeros(1), logit_scale=1.0), "not a NumPy .npz"),
    ],
)
def test_what_is_not_a_head_is_refused(data: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match="head.npz") as info:
        Head.from_npz(data)
    assert needle in str(info.value)


def test_the_merged_suffix_makes_one_valid_model() -> None:
    """A hand-built tower (image -> normalised channel means) plus the suffix: onnx's checker passes it, ONNX Runtime
    runs it, and its logits are the head's on the tower's features."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0),
            helper.make_node("LpNormalization", ["means"], ["features"], axis=1, p=2),
        ],
        "tower",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3])],
    )
    tower = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    head = Head.from_npz(_head_npz(k=5, d=3, seed=2))
    merged = tower + merged_suffix(head)
    model = onnx.load_from_string(merged)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["features", "logits"]
    assert [d.dim_param or d.dim_value for d in model.graph.output[1].type.tensor_type.shape.dim] == ["batch", 5]
    x = np.random.default_rng(3).normal(size=(4, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(merged, providers=["CPUExecutionProvider"])
    features, logits = sess.run(["features", "logits"], {"image": x})
    assert np.abs(logits - head.logits(features)).max() < 1e-5
