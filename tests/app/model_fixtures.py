"""A tiny real ONNX classifier stored as a model row, as the worker leaves one: for the /predict, export,
tenancy, bad-input and fuzz tests (tests may import torch/open_clip; only app/ must not).

The classifier averages each channel of the preprocessed image and maps (R, G, B) to (cat, lynx, dog) logits, so
a red image is a cat, a green one a lynx, a blue one a dog.
"""

from __future__ import annotations

import io
import json
from functools import lru_cache

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


def store_model(dataset_id: str, onnx: bytes, *, image_size: int = 32) -> str:
    """A Model row (and its succeeded Job) with its artifacts in the BlobStore, owned by the owner of the dataset's
    jobs (the dataset needs one job)."""
    storage = get_storage()
    pre = {"image_size": image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic"}
    pre["resize_mode"] = "shortest"
    artifacts = {
        "model.onnx": storage.put(onnx),
        "classes.json": storage.put(json.dumps(CLASSES).encode()),
        "preprocess.json": storage.put(json.dumps(pre).encode()),
        "model_card.md": storage.put(b"# tiny channel classifier\n"),
    }
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
