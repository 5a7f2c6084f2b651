"""Models, export and /predict with ONNX Runtime, and the preprocessing parity with open_clip's torch transform.

The model is the tiny channel classifier of ``tests.app.model_fixtures`` (a red image is a cat, a green one a lynx,
a blue one a dog).
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from app.config import Settings
from app.db import session_scope
from app.imaging import PreprocessConfig, preprocess
from app.models import Model
from app.predictor import get_model_cache
from tests.app.conftest import Api
from tests.app.model_fixtures import BLUE, CLASSES, GREEN, MEAN, RED, STD, ChannelClassifier, store_model

CIFAR = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpg.tar.gz"


@pytest.fixture
def trained(alice: Api, onnx_bytes: bytes) -> dict:
    rows = [
        {"file": "red.png", "candidates": ["cat", "lynx"]},
        {"file": "green.png", "candidates": ["cat", "dog"]},
        {"file": "blue.png", "candidates": ["lynx", "dog"]},
    ]
    r = alice.upload("/datasets", rows, {"red.png": RED, "green.png": GREEN, "blue.png": BLUE}, name="rgb")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert alice.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 202  # gives the dataset a job owner
    items = {i["file"]: i for i in alice.get(f"/datasets/{ds['id']}/items").json()["data"]}
    return {"dataset": ds, "items": items, "model_id": store_model(ds["id"], onnx_bytes)}


def test_get_model_and_export_zip(alice: Api, bob: Api, trained: dict, onnx_bytes: bytes) -> None:
    model_id = trained["model_id"]
    m = alice.get(f"/models/{model_id}").json()
    assert m["classes"] == CLASSES and m["backbone"] == "tiny" and m["metrics"] == {"train_acc": 1.0}
    assert m["artifacts"] == ["classes.json", "model.onnx", "model_card.md", "preprocess.json"]
    assert m["export_url"] == f"/models/{model_id}/export"
    assert [x["id"] for x in alice.get("/models").json()["data"]] == [model_id]

    r = alice.get(f"/models/{model_id}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.namelist() == [
        "model.onnx",
        "classes.json",
        "preprocess.json",
        "model_card.md",
        "model.json",
        "predict.py",
    ]
    assert zf.read("model.onnx") == onnx_bytes
    assert json.loads(zf.read("classes.json")) == CLASSES
    assert json.loads(zf.read("preprocess.json"))["image_size"] == 32
    assert json.loads(zf.read("model.json"))["id"] == model_id
    assert not list((alice.settings.data_dir / "tmp").glob("export-*"))  # the temporary zip is removed

    for url in [f"/models/{model_id}", f"/models/{model_id}/export"]:
        assert bob.get(url).status_code == 404
    assert (
        bob.get("/predict", params={"model_id": model_id, "item_id": trained["items"]["red.png"]["id"]}).status_code
        == 404
    )
    assert alice.client.get(f"/models/{model_id}").status_code == 401


def test_predict_stored_item_restricted_to_its_candidates(alice: Api, trained: dict) -> None:
    model_id, items = trained["model_id"], trained["items"]
    r = alice.get("/predict", params={"model_id": model_id, "item_id": items["green.png"]["id"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == model_id
    (pred,) = body["predictions"]
    # green is a lynx, but its candidates are cat/dog: the answer stays among them.
    assert pred["restricted_to_candidates"] is True and pred["label"] in {"cat", "dog"}
    assert {s["label"] for s in pred["top_k"]} == {"cat", "dog"}
    assert sum(s["score"] for s in pred["top_k"]) == pytest.approx(1.0)
    r = alice.get(
        "/predict",
        params={
            "model_id": model_id,
            "item_id": items["green.png"]["id"],
            "restrict_to_candidates": "false",
            "top_k": 1,
        },
    )
    assert r.json()["predictions"][0]["label"] == "lynx" and len(r.json()["predictions"][0]["top_k"]) == 1
    assert alice.get("/predict", params={"model_id": "nope", "item_id": items["red.png"]["id"]}).status_code == 404


def test_post_predict_with_candidates_and_top_k(alice: Api, trained: dict) -> None:
    model_id = trained["model_id"]
    files = [("image", ("r.png", RED, "image/png")), ("image", ("b.png", BLUE, "image/png"))]
    r = alice.post("/predict", data={"model_id": model_id, "top_k": "2"}, files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["label"] for p in preds] == ["cat", "dog"] and [p["file"] for p in preds] == ["r.png", "b.png"]
    assert all(len(p["top_k"]) == 2 and p["restricted_to_candidates"] is False for p in preds)
    assert preds[0]["top_k"][0]["score"] >= preds[0]["top_k"][1]["score"]

    # Candidates restrict the answer (one list for all images, or one per image).
    r = alice.post("/predict", data={"model_id": model_id, "candidates": json.dumps(["lynx", "dog"])}, files=files)
    preds = r.json()["predictions"]
    assert all(p["restricted_to_candidates"] for p in preds)
    assert all({s["label"] for s in p["top_k"]} == {"lynx", "dog"} for p in preds)
    assert preds[1]["label"] == "dog"
    per_image = json.dumps([["lynx"], ["cat", "dog"]])
    r = alice.post("/predict", data={"model_id": model_id, "candidates": per_image}, files=files)
    assert [p["label"] for p in r.json()["predictions"]] == ["lynx", "dog"]
    assert r.json()["predictions"][0]["score"] == pytest.approx(1.0)

    # Scores equal the torch pipeline: open_clip's eval transform + the same module + softmax.
    transform = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD)
    with torch.no_grad():
        logits = ChannelClassifier()(transform(Image.open(io.BytesIO(RED))).unsqueeze(0))[0]
    expected = torch.softmax(logits, 0).tolist()
    r = alice.post("/predict", data={"model_id": model_id, "top_k": "3"}, files=files[:1])
    got = {s["label"]: s["score"] for s in r.json()["predictions"][0]["top_k"]}
    assert [got[c] for c in CLASSES] == pytest.approx(expected, abs=1e-5)


def test_post_predict_bad_input_is_a_clear_4xx(alice: Api, trained: dict) -> None:
    model_id = trained["model_id"]
    img = [("image", ("r.png", RED, "image/png"))]
    cases = [
        ({"model_id": model_id, "candidates": '["wolf"]'}, img, 422, "wolf"),
        ({"model_id": model_id, "candidates": "not json"}, img, 422, "candidates"),
        ({"model_id": model_id, "top_k": "0"}, img, 422, "top_k"),
        ({"model_id": model_id}, [("image", ("x.png", b"nope", "image/png"))], 422, "x.png"),
        ({"model_id": model_id}, [], 422, "image"),
        ({}, img, 422, "model_id"),
        ({"model_id": "missing"}, img, 404, "missing"),
    ]
    for data, files, status, needle in cases:
        r = alice.post("/predict", data=data, files=files or [("other", ("o.txt", b"x", "text/plain"))])
        assert r.status_code == status, (data, r.text)
        assert needle in r.text and r.headers["content-type"].startswith("application/problem+json")


def test_sessions_are_cached_per_model(alice: Api, trained: dict) -> None:
    from app.predictor import get_model_cache as cache_of

    cache = cache_of()
    cache.clear()
    files = [("image", ("r.png", RED, "image/png"))]
    for _ in range(2):
        assert alice.post("/predict", data={"model_id": trained["model_id"]}, files=files).status_code == 200
    assert len(cache) == 1
    first = cache._models[trained["model_id"]]
    alice.post("/predict", data={"model_id": trained["model_id"]}, files=files)
    assert cache._models[trained["model_id"]] is first


def test_missing_artifact_is_a_409_not_a_500(alice: Api, trained: dict) -> None:
    get_model_cache().clear()
    with session_scope() as session:
        model = session.get(Model, trained["model_id"])
        model.artifacts = {**model.artifacts, "model.onnx": "0" * 64}
    assert alice.get(f"/models/{trained['model_id']}/export").status_code == 409
    r = alice.post("/predict", data={"model_id": trained["model_id"]}, files=[("image", ("r.png", RED, "image/png"))])
    assert r.status_code == 409 and r.json()["code"] == "model_incomplete"


# --- preprocessing parity ---------------------------------------------------------------------------------


def _synthetic_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    yy, xx = np.mgrid[0:377, 0:501]
    gradient = Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8))
    images = [
        noise(640, 480),
        noise(300, 1000),
        noise(224, 224),
        noise(225, 500),
        noise(50, 40),  # upscaled
        noise(223, 225),
        gradient,
        noise(331, 257).convert("L"),
        noise(256, 320).convert("RGBA"),
        noise(120, 90).convert("P"),
    ]
    if CIFAR.exists():
        with tarfile.open(CIFAR) as tf:
            for member in tf:
                if member.isfile() and member.name.endswith(".jpg"):
                    images.append(Image.open(io.BytesIO(tf.extractfile(member).read())))
                    if len(images) >= 13:
                        break
    return images


def test_preprocessing_matches_open_clip_eval_transform() -> None:
    size = 224
    transform = open_clip.image_transform(size, is_train=False, mean=MEAN, std=STD)
    cfg = PreprocessConfig(image_size=size, mean=tuple(MEAN), std=tuple(STD))
    for img in _synthetic_images():
        expected = transform(img.convert("RGB")).numpy()  # the worker's features: RGB first (ml.features._decode)
        got = preprocess(img, cfg)
        assert got.shape == expected.shape == (3, size, size) and got.dtype == np.float32
        diff = float(np.abs(got - expected).max())
        assert diff <= 1e-5, (img.size, img.mode, diff)


def test_export_zip_is_usable_on_its_own(alice: Api, trained: dict, tmp_path: Path, base_settings: Settings) -> None:
    """The exported zip alone (ONNX Runtime + preprocess.json + classes.json) reproduces the API's answer."""
    import onnxruntime as ort

    zf = zipfile.ZipFile(io.BytesIO(alice.get(f"/models/{trained['model_id']}/export").content))
    zf.extractall(tmp_path)
    cfg = PreprocessConfig.from_dict(json.loads((tmp_path / "preprocess.json").read_text()))
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = preprocess(Image.open(io.BytesIO(BLUE)), cfg)[None]
    (logits,) = sess.run(["logits"], {"image": x})
    assert json.loads((tmp_path / "classes.json").read_text())[int(logits[0].argmax())] == "dog"


def test_a_cached_model_lookup_never_serves_another_owner(alice: Api, bob: Api, trained: dict) -> None:
    files = [("image", ("r.png", RED, "image/png"))]
    assert alice.post("/predict", data={"model_id": trained["model_id"]}, files=files).status_code == 200
    r = bob.post("/predict", data={"model_id": trained["model_id"]}, files=files)  # alice's lookup is cached now
    assert r.status_code == 404 and trained["model_id"] in r.json()["detail"]
    assert alice.post("/predict", data={"model_id": trained["model_id"]}, files=files).status_code == 200
