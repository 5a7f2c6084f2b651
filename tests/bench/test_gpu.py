"""`tagsift bench gpu --tiny` on the CPU: the script a CUDA machine runs, end to end on a tiny random backbone.

Every backbone x precision line is printed with its encoding rate, epoch time and both /predict rates.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.worker.conftest import TAGSIFT, tiny_backbone

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(?P<backbone>\S+) (?P<precision>fp32|amp): encode (?P<enc>[\d.]+) images/s \(tower alone (?P<raw>[\d.]+)\),"
    r" train (?P<epoch>[\d.]+) s/epoch, predict ONNX Runtime (?P<ort>[\d.]+) images/s \(CPUExecutionProvider\),"
    r" torch (?P<torch>[\d.]+) images/s$",
    re.MULTILINE,
)


def test_bench_gpu_tiny_on_cpu(tmp_path: Path) -> None:
    spec = tiny_backbone(tmp_path)
    proc = subprocess.run(
        [str(TAGSIFT), "bench", "gpu", "--tiny", "--device", "cpu", "--backbones", spec,
         "--cache-dir", str(tmp_path / "models")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert out.startswith("bench gpu: device cpu (cpu), torch "), out
    rows = list(LINE.finditer(out))
    assert [r["precision"] for r in rows] == ["fp32", "amp"], out
    for r in rows:
        assert "random" in r["backbone"], out
        assert all(float(r[k]) > 0 for k in ("enc", "raw", "epoch", "ort", "torch")), out
