"""A model's head on a shared image tower, with NumPy only (no torch, no onnx package).

Models stored since towers are shared have, instead of one ``model.onnx`` each (docs/architecture.md, "The model
layout"):

- ``tower.onnx``: the backbone's image tower, image -> unit-length features (input ``image`` (B, 3, S, S), output
  ``features`` (B, D) float32), one blob for every model of that backbone (``ml.export.export_tower``), and
  ``tower.json``, which says what it is and its content address;
- ``head.npz``: this model's ``class_features`` (K, D), ``bias`` (K,) and ``logit_scale`` () float32
  (:data:`HEAD_ARRAYS`, written by ``ml.export.export_head``).

:class:`Head` applies the head: ``logits = features @ W + b`` with ``W = (logit_scale * class_features)^T`` in float32,
which is what the one-file model computed (``logit_scale * features @ class_features^T + bias``) up to float32
rounding; the export's ``predict.py`` does the same.

:func:`merged_suffix` makes the one-file model on request (``GET /models/{id}/export?merged=true``) without parsing
the tower: an ONNX file is a protobuf ``ModelProto``, and protobuf parsers merge a message that appears twice
(repeated fields are appended), so the tower's bytes followed by a ``ModelProto`` whose ``graph`` holds only the two
head nodes (MatMul, Add), their two initializers and the ``logits`` output are one valid model, image -> logits.
The tower is streamed into the zip as it is: no copy of it in memory, and no onnx package in the API image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

#: The arrays of head.npz (``ml.export.HEAD_ARRAYS``; tests/test_contracts.py ties the two).
HEAD_ARRAYS = ("class_features", "bias", "logit_scale")
#: The tower's output (``ml.export.TOWER_OUTPUT``) and the merged model's (preprocess.json's "output").
TOWER_OUTPUT = "features"
MERGED_OUTPUT = "logits"
#: The layouts a stored model can have: the artifacts each needs besides classes.json and preprocess.json.
LAYOUTS = {"tower": ("tower.onnx", "head.npz"), "model": ("model.onnx",)}


def layout(artifacts: dict[str, str]) -> str | None:
    """``"tower"`` (a shared tower and this model's head), ``"model"`` (one model.onnx, as stored before towers were
    shared), or None when the artifacts have neither."""
    for name, needed in LAYOUTS.items():
        if all(n in artifacts for n in needed):
            return name
    return None


@dataclass(frozen=True)
class Head:
    """A model's head: (D, K) weight ``(logit_scale * class_features)^T`` and (K,) bias, float32."""

    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def from_npz(cls, data: bytes) -> Head:
        """Read head.npz (no pickles); ValueError naming what is wrong."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                missing = [n for n in HEAD_ARRAYS if n not in npz.files]
                c, b, s = (None, None, None) if missing else (np.asarray(npz[n], np.float32) for n in HEAD_ARRAYS)
        except Exception as exc:  # not an npz: NumPy and zipfile raise assorted errors (ValueError, BadZipFile, ...)
            raise ValueError(f"head.npz is not a NumPy .npz file ({type(exc).__name__}: {exc})") from None
        if missing:
            raise ValueError(f"head.npz has no {', '.join(missing)}")
        if c.ndim != 2 or b.shape != (c.shape[0],) or s.shape != ():
            raise ValueError(
                f"head.npz: class_features {c.shape}, bias {b.shape}, logit_scale {s.shape} "
                "(expected (K, D), (K,) and a scalar)"
            )
        return cls(weight=np.ascontiguousarray((s * c).T), bias=np.ascontiguousarray(b))

    @property
    def classes(self) -> int:
        return int(self.weight.shape[1])

    @property
    def dim(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, features: np.ndarray) -> np.ndarray:
        """(B, D) tower features -> (B, K) logits, float32."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"the tower gives features of shape {features.shape}, the head takes (B, {self.dim})")
        return features @ self.weight + self.bias


# --- the merged model: protobuf fields appended to the tower's ModelProto -------------------------------------
# Field numbers of onnx.proto (ONNX IR 3 and later): ModelProto.graph 7; GraphProto node 1, initializer 5, output 12;
# NodeProto input 1, output 2, name 3, op_type 4; TensorProto dims 1, data_type 2, name 8, raw_data 9;
# ValueInfoProto name 1, type 2; TypeProto tensor_type 1; TypeProto.Tensor elem_type 1, shape 2;
# TensorShapeProto dim 1; Dimension dim_value 1, dim_param 2.

_FLOAT = 1  # TensorProto.DataType.FLOAT


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _msg(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _msg(field, text.encode())


def _tensor(name: str, array: np.ndarray) -> bytes:
    dims = b"".join(_int(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return dims + _int(2, _FLOAT) + _str(8, name) + _msg(9, raw)


def _node(op_type: str, inputs: list[str], outputs: list[str], name: str) -> bytes:
    names = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    return names + _str(3, name) + _str(4, op_type)


def _value_info(name: str, dims: list[int | str]) -> bytes:
    shape = b"".join(_msg(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    return _str(1, name) + _msg(2, _msg(1, _int(1, _FLOAT) + _msg(2, shape)))


def merged_suffix(head: Head, *, features: str = TOWER_OUTPUT, output: str = MERGED_OUTPUT) -> bytes:
    """The bytes that, appended to a tower's ONNX file, make one model: ``output`` = ``features`` @ W + b."""
    weight, bias, product = "tagsift_head_weight", "tagsift_head_bias", "tagsift_head_product"
    graph = b"".join(
        [
            _msg(1, _node("MatMul", [features, weight], [product], "tagsift_head_matmul")),
            _msg(1, _node("Add", [product, bias], [output], "tagsift_head_add")),
            _msg(5, _tensor(weight, head.weight)),
            _msg(5, _tensor(bias, head.bias)),
            _msg(12, _value_info(output, ["batch", head.classes])),
        ]
    )
    return _msg(7, graph)
