"""``tagsift bench encode --encoders``: in this process, a worker's whole read-decode-encode rate
(``ml.features.encode_images``, ``TAGSIFT_DECODE_THREADS``-style decode threads) with the torch backbone and with
the ONNX Runtime tower (``ml.ort_encoder``, what a CPU worker uses), and the raw ONNX Runtime tower rate on the same
photos decoded and preprocessed beforehand. Rounds alternate (torch, worker, raw) and the best of each counts, so a
slow spell of a shared machine does not pick the winner.

``today`` is the torch worker decoding every JPEG in full (the code before draft decoding), printed after the line.

Prints ``encode backbone=<name> photos=<WxH> torch_ips=<x> worker_ips=<y> worker_vs_torch=<y/x>
worker_vs_raw_ort=<share>``.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image


def _photos(cifar10_path: Path, n: int, size: tuple[int, int] | None) -> list[bytes]:
    from bench.data import load_cifar10

    images = load_cifar10(cifar10_path, "test", per_class=max(1, -(-n // 10)), seed=0).images[:n]
    if size is None:
        return images
    out = []
    for data in images:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize(size, Image.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run_encoder_rates(
    *,
    backbone_name: str,
    cache_dir: Path,
    cifar10_path: Path,
    images: int,
    size: tuple[int, int] | None,
    threads: int,
    batch_size: int = 64,
    decode_threads: int = 2,
    rounds: int = 2,
    out: Callable[[str], None] = print,
) -> dict:
    from ml.backbone import load_backbone
    from ml.features import _decode, _view_pixels, encode_images, sha256_bytes
    from ml.ort_encoder import ort_encoder

    torch.set_num_threads(threads)
    backbone = load_backbone(backbone_name, device="cpu", cache_dir=cache_dir)
    photos = _photos(cifar10_path, images, size)
    shas = [sha256_bytes(p) for p in photos]
    with tempfile.TemporaryDirectory(prefix="tagsift-bench-tower-") as tmp:
        ort = ort_encoder(backbone, tmp, threads=threads)
        s = backbone.preprocess_cfg.image_size
        pixels = torch.stack(
            [_view_pixels(backbone, _decode(p, s), sha, 0, 0) for p, sha in zip(photos, shas, strict=True)]
        )

        def worker(encoder, draft: bool = True) -> float:
            started = time.perf_counter()
            encode_images(encoder, photos, shas=shas, batch_size=batch_size, decode_workers=decode_threads, draft=draft)
            return len(photos) / (time.perf_counter() - started)

        def raw() -> float:
            started = time.perf_counter()
            for i in range(0, len(pixels), batch_size):
                ort.encode_image(pixels[i : i + batch_size])
            return len(photos) / (time.perf_counter() - started)

        worker(ort), raw()  # warm-up: the session's first run allocates
        best = {"torch": 0.0, "worker": 0.0, "raw": 0.0, "today": 0.0}
        for r in range(rounds):
            got = {"torch": worker(backbone), "worker": worker(ort), "raw": raw(), "today": worker(backbone, False)}
            out(f"round {r + 1}: " + " ".join(f"{k}_ips={v:.1f}" for k, v in got.items()))
            best = {k: max(best[k], got[k]) for k in best}
    w, h = Image.open(io.BytesIO(photos[0])).size
    line = (
        f"encode backbone={backbone_name} photos={w}x{h} torch_ips={best['torch']:.1f} worker_ips={best['worker']:.1f}"
        f" worker_vs_torch={best['worker'] / best['torch']:.2f} worker_vs_raw_ort={best['worker'] / best['raw']:.1%}"
    )
    out(line)
    out(
        f"today_ips={best['today']:.1f} (torch, JPEGs decoded in full)"
        f" worker_vs_today={best['worker'] / best['today']:.2f}"
    )
    return best
