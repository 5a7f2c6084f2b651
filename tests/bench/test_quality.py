"""bench.quality at a tiny size: one (q, seed, method) run on separable synthetic features with the tiny backbone,
its printed lines and summary, and the estimate against the truth it prints."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from bench.quality import one_run, summary
from tests.ml.conftest import CLASSNAMES


def test_one_run_prints_the_estimate_against_the_truth(tiny_native):
    g = torch.Generator().manual_seed(0)
    k, n = len(CLASSNAMES), 150
    truth = torch.arange(n) % k
    centres = F.normalize(torch.randn(k, tiny_native.embed_dim, generator=g), dim=1)
    feats = (centres[truth] + 0.5 * torch.randn(n, tiny_native.embed_dim, generator=g))[None]
    lines: list[str] = []
    rows = one_run(
        tiny_native, feats, truth, CLASSNAMES, q=0.3, seed=1, method="linear_probe", audits=(0, 30), log=lines.append
    )
    assert [r["audit"] for r in rows] == [0, 30] and len(lines) == 2
    for line, row in zip(lines, rows, strict=True):
        m = re.match(r"quality audit=(\d+) est=([\d.]+) true=([\d.]+) covered=([01]) ", line)
        assert m and int(m[1]) == row["audit"] and int(m[4]) == row["covered"]
        assert row["covered"] == int(row["lo"] <= row["true"] <= row["hi"])
        assert abs(row["est"] - row["true"]) <= 0.15, row  # separable clusters: the figure lands near the truth
    text = summary(rows)
    assert text[0].startswith("quality summary audit=0 runs=1 ") and "within_5pts=" in text[0]
    assert any(t.startswith("quality summary audit=30 runs=1 ") and "covered=" in t for t in text)
