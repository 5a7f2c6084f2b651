"""A tiny real ONNX classifier stored as a model row, as the worker leaves one: for the /predict, export,
tenancy, bad-input and fuzz tests (tests may import torch/open_clip; only app/ must not).

The classifier averages each channel of the preprocessed image and maps (R, G, B) to (cat, lynx, dog) logits, so
a red image is a cat, a green one a lynx, a blue one a dog.
"""

from __future__ import annotations

import io
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
from PIL import Image
from sqlalchemy import select

from app.db import session_scope
from app.models import Job, Model
from app.storage import get_storage

CLASSES = ["cat", "lynx", "dog"]
MEAN = open_clip.OPENAI_DATASET_MEAN
STD = open_clip.OPENAI_DATASET_STD


class ChannelClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(3) * 4.0)
            self.lin.bias.copy_(torch.tensor([0.1, 0.0, -0.1]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.lin(image.mean(dim=(2, 3)))  # (B, 3, S, S) -> (B, 3) -> (B, K)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


RED, GREEN, BLUE = solid((250, 10, 10)), solid((10, 250, 10)), solid((10, 10, 250))


@lru_cache(maxsize=1)
def channel_classifier_onnx() -> bytes:
    """:class:`ChannelClassifier` exported with ``torch.onnx.export`` (dynamic batch), once per test session."""
    buf = io.BytesIO()
    torch.onnx.export(
        ChannelClassifier().eval(),
        (torch.zeros(1, 3, 32, 32),),
        buf,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return buf.getvalue()


def _preprocess_json(image_size: int) -> bytes:
    pre = {"image_size": image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic"}
    pre["resize_mode"] = "shortest"
    return json.dumps(pre).encode()


def store_model(dataset_id: str, onnx: bytes, *, image_size: int = 32) -> str:
    """A Model row (and its succeeded Job) with its artifacts in the BlobStore, owned by the owner of the dataset's
    jobs (the dataset needs one job): one model.onnx, the layout of models stored before towers were shared."""
    storage = get_storage()
    artifacts = {
        "model.onnx": storage.put(onnx),
        "classes.json": storage.put(json.dumps(CLASSES).encode()),
        "preprocess.json": storage.put(_preprocess_json(image_size)),
        "model_card.md": storage.put(b"# tiny channel classifier\n"),
    }
    return _model_row(dataset_id, artifacts)


# --- models on a shared tower (tower.onnx + head.npz), as the worker stores them now ---------------------------


class ChannelMean(torch.nn.Module):
    """A tower's visual part for the tests: the mean of each preprocessed channel, (B, 3, S, S) -> (B, 3)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.mean(dim=(2, 3))


@lru_cache(maxsize=1)
def channel_tower_onnx() -> bytes:
    """``ml.export.ImageTower(ChannelMean())`` (unit-length channel means, output "features") as ONNX bytes."""
    from ml.export import TOWER_OUTPUT, ImageTower, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tower.onnx"
        export_onnx(ImageTower(ChannelMean()).eval(), 32, path, TOWER_OUTPUT)
        return path.read_bytes()


def channel_head(seed: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(class_features (3, 3), logit scale, bias (3,)): a red image is most a cat, green a lynx, blue a dog, plus
    seeded noise (so that models differ)."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.nn.functional.normalize(torch.eye(3) + 0.3 * torch.rand(3, 3, generator=gen), dim=1)
    return c, 5.0 + seed, 0.2 * torch.randn(3, generator=gen)


def one_file_onnx(class_features: torch.Tensor, logit_scale: float, bias: torch.Tensor) -> bytes:
    """The same classifier as one model.onnx (``ml.export.ImageClassifier``): what the worker stored before."""
    from ml.export import ImageClassifier, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(ImageClassifier(ChannelMean(), class_features, logit_scale, bias).eval(), 32, path, "logits")
        return path.read_bytes()


def store_tower_model(dataset_id: str, head: tuple[torch.Tensor, float, torch.Tensor], *, tower: bytes) -> str:
    """A Model row whose artifacts are the shared ``tower`` and this ``head`` (``ml.export.export_head``'s
    head.npz), as ``worker.model_store`` leaves them."""
    from ml.export import head_arrays, write_npz

    storage = get_storage()
    with tempfile.TemporaryDirectory() as tmp:
        write_npz(Path(tmp) / "head.npz", head_arrays(head[0], head[1], head[2]))
        head_npz = (Path(tmp) / "head.npz").read_bytes()
    tower_sha = storage.put(tower)
    artifacts = {
        "tower.onnx": tower_sha,
        "tower.json": storage.put(json.dumps({"onnx_sha256": tower_sha, "output": "features"}).encode()),
        "head.npz": storage.put(head_npz),
        "classes.json": storage.put(json.dumps(CLASSES).encode()),
        "preprocess.json": storage.put(_preprocess_json(32)),
        "model_card.md": storage.put(b"# tiny channel classifier\n"),
    }
    return _model_row(dataset_id, artifacts)


def _model_row(dataset_id: str, artifacts: dict[str, str]) -> str:
    with session_scope() as session:
        owner_id = session.scalar(select(Job.owner_id).where(Job.dataset_id == dataset_id).limit(1))
        job = Job(owner_id=owner_id, dataset_id=dataset_id, status="succeeded", params={"method": "coop"})
        session.add(job)
        session.flush()
        model = Model(
            owner_id=owner_id,
            dataset_id=dataset_id,
            job_id=job.id,
            backbone="tiny",
            method="coop",
            classes=CLASSES,
            metrics={"train_acc": 1.0},
            artifacts=artifacts,
        )
        session.add(model)
        session.flush()
        job.model_id = model.id
        return model.id
