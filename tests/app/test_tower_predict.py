"""Models on a shared image tower (issue 15, item 3): tower.onnx once for every model of a backbone, head.npz per
model. /predict runs one ONNX Runtime session per tower for all its models and applies each head in NumPy, with the
scores of the same classifiers stored as one model.onnx each (the layout before); the merged export is one valid
ONNX model with the same logits; a broken tower or head is a 409, never a 500.

The tower is ``ml.export.ImageTower`` over the channel means of ``tests.app.model_fixtures`` (a red image is a cat,
a green one a lynx, a blue one a dog), exported by ``ml.export.export_onnx`` as the worker exports a real tower.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from app.db import session_scope
from app.models import Model
from app.predictor import get_model_cache
from app.storage import get_storage
from tests.app.conftest import Api
from tests.app.model_fixtures import (
    BLUE,
    CLASSES,
    GREEN,
    RED,
    channel_head,
    channel_tower_onnx,
    one_file_onnx,
    solid,
    store_model,
    store_tower_model,
)
from tests.app.test_fuzz import _drop_queue

HEADS = [channel_head(seed) for seed in range(3)]
IMAGES = [("red.png", RED), ("green.png", GREEN), ("blue.png", BLUE), ("grey.png", solid((90, 120, 100), (50, 70)))]


@pytest.fixture
def models(alice: Api) -> dict[str, list[str]]:
    """Three models on one tower and the same three classifiers stored as one model.onnx each."""
    ds = alice.make_dataset(3)
    try:
        assert alice.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 202  # the dataset's owner
    finally:
        _drop_queue(alice.settings.broker_url, alice.settings.queue)
    tower = channel_tower_onnx()
    return {
        "tower": [store_tower_model(ds["id"], head, tower=tower) for head in HEADS],
        "one_file": [store_model(ds["id"], one_file_onnx(*head)) for head in HEADS],
    }


def _scores(api: Api, model_id: str) -> list[dict[str, float]]:
    files = [("image", (name, data, "image/png")) for name, data in IMAGES]
    r = api.post("/predict", data={"model_id": model_id, "top_k": "3"}, files=files)
    assert r.status_code == 200, r.text
    return [{s["label"]: s["score"] for s in p["top_k"]} for p in r.json()["predictions"]]


def test_models_of_one_tower_share_one_session_and_score_like_one_file_models(alice: Api, models: dict) -> None:
    cache = get_model_cache()
    cache.clear()
    for tower_model, one_file in zip(models["tower"], models["one_file"], strict=True):
        ours, before = _scores(alice, tower_model), _scores(alice, one_file)
        for a, b in zip(ours, before, strict=True):
            assert a.keys() == b.keys() == set(CLASSES)
            assert max(abs(a[c] - b[c]) for c in CLASSES) <= 1e-5, (a, b)
    assert [max(s, key=s.get) for s in _scores(alice, models["tower"][0])[:3]] == CLASSES  # a real classifier
    storage = get_storage()
    with session_scope() as session:
        shas = {session.get(Model, m).artifacts["tower.onnx"] for m in models["tower"]}
    assert len(shas) == 1  # one tower blob
    # one session for the three tower models, one per one-file model
    assert set(cache.sessions) == shas | {cache._models[m].onnx_sha for m in models["one_file"]}
    assert len(cache.sessions) == 1 + len(models["one_file"]) and len(cache) == 6
    tower_session = cache.sessions[next(iter(shas))]
    assert all(cache._models[m].session_of() is tower_session for m in models["tower"])
    assert storage.exists(next(iter(shas)))


def test_logits_of_the_head_path_equal_the_one_file_model(alice: Api, models: dict) -> None:
    from app.imaging import open_image
    from app.predictor import load_model

    storage = get_storage()
    images = [open_image(data) for _, data in IMAGES]
    with session_scope() as session:
        rows = {m: dict(session.get(Model, m).artifacts) for m in models["tower"] + models["one_file"]}
    for tower_model, one_file in zip(models["tower"], models["one_file"], strict=True):
        got, want = (
            load_model(model_id=m, artifacts=rows[m], storage=storage, settings=alice.settings).logits(
                images, batch_size=3
            )
            for m in (tower_model, one_file)
        )
        assert got.shape == want.shape == (len(IMAGES), 3)
        assert np.abs(got - want).max() <= 1e-5


def test_the_merged_export_is_one_valid_onnx_model(alice: Api, models: dict, tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    from app.imaging import PreprocessConfig, open_image, preprocess

    model_id = models["tower"][1]
    plain = zipfile.ZipFile(io.BytesIO(alice.get(f"/models/{model_id}/export").content))
    assert plain.namelist() == [
        "tower.onnx",
        "tower.json",
        "head.npz",
        "classes.json",
        "preprocess.json",
        "model_card.md",
        "model.json",
        "predict.py",
    ]
    assert plain.read("tower.onnx") == channel_tower_onnx()
    card = plain.read("model_card.md").decode()
    assert "`tower.onnx`" in card and "`head.npz`" in card and "merged=true" in card
    r = alice.get(f"/models/{model_id}/export", params={"merged": "true"})
    assert r.status_code == 200, r.text
    merged = zipfile.ZipFile(io.BytesIO(r.content))
    assert merged.namelist() == [
        "model.onnx",
        "classes.json",
        "preprocess.json",
        "model_card.md",
        "model.json",
        "predict.py",
    ]
    onnx_bytes = merged.read("model.onnx")
    assert onnx_bytes.startswith(channel_tower_onnx())  # the tower as it is, then the head
    model = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["features", "logits"]
    cfg = PreprocessConfig.from_dict(json.loads(merged.read("preprocess.json")))
    x = np.stack([preprocess(open_image(data), cfg) for _, data in IMAGES])
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"image": x})
    # the one-file model of the same head gives the same logits
    ref = ort.InferenceSession(one_file_onnx(*HEADS[1]), providers=["CPUExecutionProvider"])
    assert np.abs(logits - ref.run(["logits"], {"image": x})[0]).max() <= 1e-5
    # ?merged=true on a model stored as one model.onnx: that file, unchanged
    one_file = zipfile.ZipFile(io.BytesIO(alice.get(f"/models/{models['one_file'][1]}/export?merged=true").content))
    assert one_file.read("model.onnx") == one_file_onnx(*HEADS[1])
    assert "tower.onnx" not in one_file.namelist()


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("tower.onnx", "0" * 64, "tower.onnx"),  # the blob is gone
        ("head.npz", "bytes", "head.npz"),  # not an npz
        ("head.npz", "classes", "classes"),  # a head for another number of classes
        ("tower.onnx", "garbage", "tower.onnx"),  # not an ONNX file
    ],
)
def test_a_broken_tower_or_head_is_a_409_naming_it(alice: Api, models: dict, name: str, value: str, needle: str):
    import torch

    from ml.export import head_arrays, write_npz

    storage = get_storage()
    model_id = models["tower"][0]
    if value == "bytes":
        value = storage.put(b"not an npz")
    elif value == "classes":
        path = get_storage().local("tmp-test/head.npz")
        write_npz(path, head_arrays(torch.eye(2, 3), 1.0))
        value = storage.put(path.read_bytes())
    elif value == "garbage":
        value = storage.put(b"\x08\x07garbage, not a protobuf")
    with session_scope() as session:
        model = session.get(Model, model_id)
        model.artifacts = {**model.artifacts, name: value}
    get_model_cache().clear()
    r = alice.post("/predict", data={"model_id": model_id}, files=[("image", ("r.png", RED, "image/png"))])
    assert r.status_code == 409 and r.json()["code"] == "model_incomplete", r.text
    assert needle in r.json()["detail"]
    if name == "head.npz":
        r = alice.get(f"/models/{model_id}/export", params={"merged": "true"})
        assert r.status_code == 409 and "head.npz" in r.json()["detail"], r.text
    for other in models["tower"][1:]:  # the other models of the tower still answer
        r = alice.post("/predict", data={"model_id": other}, files=[("image", ("r.png", RED, "image/png"))])
        assert r.status_code == 200, r.text
