"""`tagsift bench tower` on a tiny random backbone (CI): both layouts stored through the worker's code, a /predict
process per layout, the figures printed; a model on the shared tower adds less than a one-file model does, the tower
layout holds one ONNX Runtime session for all its models, and the two layouts give the same logits."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.worker.conftest import TAGSIFT, tiny_backbone

ROOT = Path(__file__).resolve().parents[2]
LAST = re.compile(
    r"^tower models=(?P<models>\d+) added_bytes_per_model=(?P<added>\d+) one_file_added_bytes_per_model=(?P<old>\d+)"
    r" predict_rss_mib=(?P<rss>[\d.]+) one_file_predict_rss_mib=(?P<old_rss>[\d.]+)$"
)


def test_bench_tower_tiny(tmp_path: Path) -> None:
    spec = tiny_backbone(tmp_path)
    proc = subprocess.run(
        [str(TAGSIFT), "bench", "tower", "--backbone", spec, "--models", "3", "--classes", "4",
         "--cache-dir", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    lines = out.strip().splitlines()
    assert lines[0].startswith("bench tower: backbone ") and "3 models of 4 classes" in lines[0], out
    m = LAST.match(lines[-1])
    assert m and m["models"] == "3", out
    assert 0 < int(m["added"]) < int(m["old"]), out  # a head and its card, not a tower
    assert float(m["rss"]) > 0 and float(m["old_rss"]) > 0, out
    assert "shared tower + head: 3 models loaded, 1 ONNX Runtime sessions" in out, out
    assert "one model.onnx per model: 3 models loaded, 3 ONNX Runtime sessions" in out, out
    assert re.search(r"^parity: largest logit difference between the layouts \S+", out, re.MULTILINE), out
