"""``tagsift bench tower``: what a model costs on a shared image tower against one model.onnx per model.

For ``models`` models of one backbone (seeded random class matrices of ``classes`` classes, logit scale 100, as a
job's head after training), both layouts are stored into a file blob store of their own, through the code the
worker runs:

- **shared tower** (today): ``ml.export.export_head`` and ``worker.model_store.store_model`` (the tower exported
  and stored only when its content address is absent);
- **one model.onnx per model** (before): ``ml.export.export_classifier``, every file ``put_file``.

Each model also stores a 2,048-byte model card of its own, the same in both layouts. Printed: the bytes the store
grew by for the first model and, on average, for each additional one.

Then ``/predict`` memory: for each layout, a fresh Python process imports the API (``app.main``, no torch), loads
the ``models`` models into ``app.predictor``'s cache (``TAGSIFT_PREDICT_CACHE_SIZE`` = models, so the one-file
layout keeps all its sessions, as a deployment serving them would) and predicts one image with each, the calls
``POST /predict`` makes after its database lookup; printed: its RSS after the imports, after the models (VmRSS)
and its peak (VmHWM), the ONNX Runtime sessions it holds, and the largest difference between the two layouts'
logits. Last line: ``tower models=N added_bytes_per_model=B one_file_added_bytes_per_model=B
predict_rss_mib=M one_file_predict_rss_mib=M``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CARD_BYTES = 2048


@dataclass
class TowerBenchConfig:
    backbone: str = "reference"
    cache_dir: Path = Path("var/test-models")
    models: int = 10
    classes: int = 10
    seed: int = 1


def _mib(kib: int) -> float:
    return kib / 1024


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _card(i: int) -> bytes:
    head = f"# bench model {i}\n\n".encode()
    return head + b"x" * (CARD_BYTES - len(head))


def _heads(backbone, cfg: TowerBenchConfig) -> list:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(cfg.seed)
    return [
        (F.normalize(torch.randn(cfg.classes, backbone.embed_dim, generator=gen), dim=1), 100.0, None)
        for _ in range(cfg.models)
    ]


def store_layouts(backbone, cfg: TowerBenchConfig, work: Path) -> dict[str, dict]:
    """Store ``cfg.models`` models in both layouts; per layout: store root, bytes after each model, artifacts."""
    from app.storage import LocalBlobStore
    from ml.export import export_classifier, export_head
    from worker.model_store import store_model

    classnames = [f"class {k}" for k in range(cfg.classes)]
    out: dict[str, dict] = {}
    for name in ("one_file", "tower"):
        store = LocalBlobStore(work / name / "store")
        store.check()
        sizes, artifacts = [], []
        for i, (c, scale, bias) in enumerate(_heads(backbone, cfg)):
            files_dir = work / name / f"model-{i}"
            if name == "tower":
                files = export_head(c, scale, classnames, backbone.preprocess_cfg, files_dir, class_bias=bias)
                stored = store_model(store, backbone, {p.name: p for p in files.values()}, _card(i), files_dir / "t")
            else:
                files = export_classifier(backbone, c, scale, classnames, files_dir, class_bias=bias)
                stored = {p.name: store.put_file(p) for p in files.values()}
                stored["model_card.md"] = store.put(_card(i))
            artifacts.append(stored)
            sizes.append(_dir_bytes(store.root))
        onnx = store.path_if_local(artifacts[0]["tower.onnx" if name == "tower" else "model.onnx"])
        out[name] = {"root": store.root, "sizes": sizes, "artifacts": artifacts, "onnx_bytes": onnx.stat().st_size}
    return out


def _rss_kib() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def serve_models(spec_path: str) -> None:
    """The child process: the API's imports, then ``models`` models loaded and one prediction each (JSON out)."""
    spec = json.loads(Path(spec_path).read_text())
    import numpy as np
    from PIL import Image

    import app.main  # noqa: F401 - everything the API process imports
    from app.config import get_settings
    from app.predictor import get_model_cache
    from app.storage import LocalBlobStore

    baseline = _rss_kib()
    storage = LocalBlobStore(spec["root"])
    settings = get_settings()
    cache = get_model_cache()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    logits = []
    for i, artifacts in enumerate(spec["artifacts"]):
        loaded = cache.get(model_id=f"m{i}", artifacts=artifacts, storage=storage, settings=settings)
        logits.append(loaded.logits([image], batch_size=1)[0].tolist())
    after = _rss_kib()
    print(
        json.dumps(
            {
                "baseline_kib": baseline["VmRSS"],
                "after_kib": after["VmRSS"],
                "peak_kib": after["VmHWM"],
                "sessions": len(cache.sessions),
                "models": len(cache),
                "torch_loaded": "torch" in sys.modules,
                "logits": logits,
            }
        )
    )


def predict_memory(root: Path, artifacts: list[dict], work: Path, name: str) -> dict:
    spec = work / f"{name}-serve.json"
    spec.write_text(json.dumps({"root": str(root), "artifacts": artifacts}))
    env = {**os.environ, "TAGSIFT_PREDICT_CACHE_SIZE": str(len(artifacts)), "TAGSIFT_DATA_DIR": str(work / "api")}
    root_dir = str(Path(__file__).resolve().parents[1])  # this checkout's packages, however tagsift was started
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root_dir, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tower", str(spec)], capture_output=True, text=True, env=env, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the /predict process failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_tower_bench(cfg: TowerBenchConfig, out: Callable[[str], None] = print) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from ml.backbone import load_backbone
    from ml.export import tower_address

    if cfg.models < 2:
        raise ValueError("--models: at least 2 (the figure is the cost of each model after the first)")
    backbone = load_backbone(cfg.backbone, cache_dir=cfg.cache_dir)
    out(
        f"bench tower: backbone {cfg.backbone} (id {backbone.id}, embed_dim {backbone.embed_dim}, image_size "
        f"{backbone.preprocess_cfg.image_size}), {cfg.models} models of {cfg.classes} classes; torch "
        f"{torch.__version__}, onnxruntime {ort.__version__}; tower address {tower_address(backbone)[:16]}"
    )
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="tagsift-bench-tower-") as tmp:
        work = Path(tmp)
        stored = store_layouts(backbone, cfg, work)
        labels = {"one_file": "one model.onnx per model", "tower": "shared tower + head"}
        for name, s in stored.items():
            sizes = s["sizes"]
            added = (sizes[-1] - sizes[0]) / (len(sizes) - 1)
            figures[name] = {"first_bytes": sizes[0], "added_bytes": added, "total_bytes": sizes[-1]}
            extra = f"; tower.onnx {s['onnx_bytes']} bytes, stored once" if name == "tower" else ""
            out(
                f"stored, {labels[name]}: first model {sizes[0]} bytes, each additional model {added:.0f} bytes "
                f"(mean of {len(sizes) - 1}), {cfg.models} models {sizes[-1]} bytes{extra}"
            )
        logits = {}
        for name, s in stored.items():
            mem = predict_memory(s["root"], s["artifacts"], work, name)
            if mem["torch_loaded"]:
                raise RuntimeError("the /predict process imported torch")
            logits[name] = np.asarray(mem["logits"])
            figures[name].update(
                rss_mib=_mib(mem["after_kib"]),
                added_rss_mib=_mib(mem["after_kib"] - mem["baseline_kib"]),
                peak_mib=_mib(mem["peak_kib"]),
                sessions=mem["sessions"],
            )
            out(
                f"/predict process, {labels[name]}: {mem['models']} models loaded, {mem['sessions']} ONNX Runtime "
                f"sessions; RSS {_mib(mem['baseline_kib']):.1f} MiB after the API's imports, "
                f"{_mib(mem['after_kib']):.1f} MiB with the models (+{_mib(mem['after_kib'] - mem['baseline_kib']):.1f}"
                f" MiB), peak {_mib(mem['peak_kib']):.1f} MiB"
            )
    diff = float(np.abs(logits["tower"] - logits["one_file"]).max())
    figures["max_logit_diff"] = diff
    out(f"parity: largest logit difference between the layouts {diff:.2e} ({cfg.models} models, one image each)")
    if diff > 1e-3:
        raise RuntimeError(f"the two layouts disagree: logits differ by {diff}")
    t, o = figures["tower"], figures["one_file"]
    out(
        f"tower models={cfg.models} added_bytes_per_model={t['added_bytes']:.0f} "
        f"one_file_added_bytes_per_model={o['added_bytes']:.0f} predict_rss_mib={t['rss_mib']:.1f} "
        f"one_file_predict_rss_mib={o['rss_mib']:.1f}"
    )
    return figures


if __name__ == "__main__":
    serve_models(sys.argv[1])
