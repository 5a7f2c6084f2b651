"""The export describes itself (issue 16, item 7): preprocess.json and the model card state every preprocessing
step, and the zip's predict.py, run as a user would (a subprocess, onnxruntime + NumPy + Pillow only), gives the
scores of POST /predict on square and non-square images of every colour mode, for every layout of the export (one
model.onnx, a shared tower + head, and the merged model.onnx)."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging import PREPROCESS_STEPS
from tests.app.conftest import Api
from tests.app.model_fixtures import (
    CLASSES,
    MEAN,
    STD,
    channel_head,
    channel_tower_onnx,
    store_model,
    store_tower_model,
)
from tests.app.test_fuzz import _drop_queue


def _noise(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    return img if mode == "RGBA" else img.convert(mode)


#: (file name, size, mode, format): square, wide, tall, the crop-only and no-resize sizes, every colour mode
IMAGES = [
    ("square.png", (64, 64), "RGB", "PNG"),
    ("wide.jpg", (90, 50), "RGB", "JPEG"),
    ("tall-palette.png", (37, 91), "P", "PNG"),
    ("wide-alpha.png", (70, 40), "RGBA", "PNG"),
    ("tall-grey.png", (33, 47), "L", "PNG"),
    ("exact.png", (32, 32), "RGB", "PNG"),
    ("crop-only.png", (32, 80), "RGB", "PNG"),
]


@pytest.fixture(params=["model.onnx", "tower+head", "merged"])
def export_dir(request, alice: Api, onnx_bytes: bytes, tmp_path: Path) -> tuple[str, Path]:
    """Every layout an export can have: a model stored as one model.onnx (before towers were shared), a model on a
    shared tower (tower.onnx + head.npz), and that model exported with ?merged=true (one model.onnx)."""
    ds = alice.make_dataset(3)
    try:
        assert alice.post(f"/datasets/{ds['id']}/jobs", json={}).status_code == 202  # the dataset's owner
    finally:
        _drop_queue(alice.settings.broker_url, alice.settings.queue)
    if request.param == "model.onnx":
        model_id = store_model(ds["id"], onnx_bytes)
    else:
        model_id = store_tower_model(ds["id"], channel_head(1), tower=channel_tower_onnx())
    r = alice.get(f"/models/{model_id}/export", params={"merged": "true"} if request.param == "merged" else {})
    assert r.status_code == 200, r.text
    out = tmp_path / "export"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(out)
    assert (out / "model.onnx").exists() == (request.param != "tower+head")
    assert (out / "head.npz").exists() == (out / "tower.onnx").exists() == (request.param == "tower+head")
    return model_id, out


def test_preprocess_json_and_the_card_state_every_step(export_dir: tuple[str, Path]) -> None:
    _, out = export_dir
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre == {
        "image_size": 32,
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        **PREPROCESS_STEPS,
    }
    assert pre["steps"][0].startswith("decode the image and convert it to RGB")  # before the resize
    card = (out / "model_card.md").read_text()
    assert card.startswith("# tiny channel classifier")  # the stored card, with the section added
    assert "## Preprocessing" in card and "image_size 32, interpolation bicubic" in card
    assert all(step in card for step in pre["steps"]) and "python predict.py" in card


def test_predict_py_uses_only_onnxruntime_numpy_and_pillow(export_dir: tuple[str, Path]) -> None:
    tree = ast.parse((export_dir[1] / "predict.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"onnxruntime", "numpy", "PIL"}
    assert len((export_dir[1] / "predict.py").read_text().splitlines()) <= 80  # short enough to read


def _run_predict(out: Path, files: list[Path], *extra: str) -> list[dict]:
    # -I: isolated from PYTHONPATH and the working directory, so tagsift's own code cannot be imported
    cmd = [sys.executable, "-I", str(out / "predict.py"), "--top-k", "3", *extra, *map(str, files)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=out.parent)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _max_diff(ours: list[dict], server: list[dict]) -> float:
    worst = 0.0
    for a, b in zip(ours, server, strict=True):
        sa, sb = {t["label"]: t["score"] for t in a["top_k"]}, {t["label"]: t["score"] for t in b["top_k"]}
        assert sa.keys() == sb.keys() and a["label"] == b["label"]
        worst = max(worst, *(abs(sa[k] - sb[k]) for k in sa))
    return worst


def test_predict_py_gives_the_servers_scores(alice: Api, export_dir: tuple[str, Path], tmp_path: Path) -> None:
    model_id, out = export_dir
    files, parts = [], []
    for i, (name, size, mode, fmt) in enumerate(IMAGES):
        buf = io.BytesIO()
        _noise(size, mode, seed=i).save(buf, format=fmt)
        (tmp_path / name).write_bytes(buf.getvalue())
        files.append(tmp_path / name)
        parts.append(("image", (name, buf.getvalue(), "application/octet-stream")))

    for candidates in (None, ["cat", "dog"]):
        data = {"model_id": model_id, "top_k": "3", **({"candidates": json.dumps(candidates)} if candidates else {})}
        r = alice.post("/predict", data=data, files=parts)
        assert r.status_code == 200, r.text
        server = r.json()["predictions"]
        ours = _run_predict(out, files, *(["--candidates", json.dumps(candidates)] if candidates else []))
        assert [o["file"] for o in ours] == list(map(str, files))
        assert {t["label"] for t in ours[0]["top_k"]} == set(candidates or CLASSES)
        assert _max_diff(ours, server) <= 1e-5, candidates
