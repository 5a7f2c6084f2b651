"""Score images with an exported tagsift model: the same scores as the server's POST /predict.

    pip install onnxruntime numpy pillow
    python predict.py photo.jpg other.png                   # the model files next to this script
    python predict.py --model path/to/unzipped --candidates '["cat", "lynx"]' --top-k 2 photo.jpg

One JSON line per image on stdout: {"file", "label", "score", "top_k": [{"label", "score"}, ...]}. The steps are
the ones preprocess.json states (RGB first, shortest side resized, centre crop, /255, mean/std, softmax). The
model is model.onnx (image -> logits), or the backbone's tower.onnx (image -> features) and the head in head.npz:
logits = features @ (logit_scale * class_features).T + bias.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def preprocess(img: Image.Image, cfg: dict) -> np.ndarray:
    """(3, S, S) float32: RGB, resize the shortest side to S, centre-crop S, /255, (x - mean) / std."""
    size = cfg["image_size"]
    img = img.convert("RGB")
    w, h = img.size
    if min(w, h) != size:
        long = int(size * max(w, h) / min(w, h))
        w, h = (size, long) if w <= h else (long, size)
        img = img.resize((w, h), FILTERS[cfg["interpolation"]])
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.uint8).astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
    mean = np.asarray(cfg["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg["std"], dtype=np.float32).reshape(3, 1, 1)
    return (x - mean) / std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, default=Path(__file__).resolve().parent, help="the unzipped export")
    parser.add_argument("--candidates", help='JSON list of classes to choose among, e.g. ["cat", "lynx"]')
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args()
    cfg = json.loads((args.model / "preprocess.json").read_text())
    classes = json.loads((args.model / "classes.json").read_text())
    one = (args.model / "model.onnx").exists()
    onnx = args.model / ("model.onnx" if one else "tower.onnx")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    output = cfg["output"] if one else session.get_outputs()[0].name
    if not one:
        with np.load(args.model / "head.npz", allow_pickle=False) as h:
            weight, bias = (np.float32(h["logit_scale"]) * h["class_features"]).T, h["bias"]
    allowed = sorted({classes.index(c) for c in json.loads(args.candidates)}) if args.candidates else None
    for path in args.images:
        with Image.open(path) as img:
            x = preprocess(img, cfg)[None]
        out = session.run([output], {cfg["input"]: x})[0]
        logits = (out if one else out @ weight + bias)[0]
        idx = np.arange(len(classes)) if allowed is None else np.asarray(allowed)
        z = np.exp(logits[idx].astype(np.float64) - logits[idx].max())
        p = z / z.sum()
        top = [{"label": classes[idx[i]], "score": float(p[i])} for i in np.argsort(-p, kind="stable")[: args.top_k]]
        print(json.dumps({"file": str(path), "label": top[0]["label"], "score": top[0]["score"], "top_k": top}))


if __name__ == "__main__":
    main()
