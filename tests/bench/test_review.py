"""bench.review at a tiny size: the reviewer simulation's bookkeeping, the three orders, R95, the report and the
CIFAR-10 command path (tiny random-init backbone, a few images per class)."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from bench.review import ORDERS, ReviewSetting, default_params, report_md, run, run_cifar10, simulate
from tests.ml.conftest import CLASSNAMES, NATIVE_NAME
from tests.ml.reference_fixtures import cifar10_path  # noqa: F401 - fixture


def _setting(dim: int, n: int = 60, q: float = 0.5, seed: int = 0) -> ReviewSetting:
    g = torch.Generator().manual_seed(seed)
    k = len(CLASSNAMES)
    truth = torch.arange(n) % k
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    feats = torch.stack([centres[truth] + 0.6 * torch.randn(n, dim, generator=g) for _ in range(2)])
    cands = torch.rand(n, k, generator=g) < q
    cands[torch.arange(n), truth] = True
    return ReviewSetting(feats, cands, truth, list(CLASSNAMES))


def test_simulation_bookkeeping_and_orders(tiny_native):
    setting = _setting(tiny_native.embed_dim)
    params = default_params(60, len(CLASSNAMES), epochs=2, n_ctx=4)
    assert params["method"] == "aligned_head"  # auto: the aligned head at every size
    report = run(tiny_native, setting, budgets=(0.1, 0.2), max_share=0.2, params=params, log=lambda _m: None)
    assert {(r["order"], r["budget"]) for r in report["runs"]} == {(o, b) for o in ORDERS for b in (0.1, 0.2)}
    for r in report["runs"]:
        rounds = r["rounds"]
        shares = [e["reviewed_share"] for e in rounds]
        assert shares == ([0.0, 0.1, 0.2] if r["budget"] == 0.1 else [0.0, 0.2])
        for before, after in zip(rounds, rounds[1:], strict=False):
            assert before["checked"] == round(r["budget"] * 60) and 0 <= before["found"] <= before["wrong"]
            # every fixed label stays right: wrong labels can only move among the unreviewed items
            assert after["wrong"] <= 60 - round(after["reviewed_share"] * 60)
        assert r["r95"] is None or r["r95"] in shares
    # the first round trains on the same data whatever the order (shared): same accuracy for every order
    assert len({r["rounds"][0]["accuracy"] for r in report["runs"]}) == 1
    text = report_md(report, "tagsift bench review --per-class 3", None)
    assert "R95" in text and "found vs random" in text and "tagsift bench review --per-class 3" in text


def test_reviewing_everything_reaches_r95(tiny_native):
    setting = _setting(tiny_native.embed_dim, n=20, q=1.0)  # every tag a candidate: the model alone is poor
    params = default_params(20, len(CLASSNAMES), epochs=1, n_ctx=4)
    out = simulate(tiny_native, setting, order="random", budget=0.5, max_share=1.0, params=params, log=print)
    assert [e["reviewed_share"] for e in out["rounds"]] == [0.0, 0.5, 1.0]
    assert out["rounds"][-1]["accuracy"] == 1.0 and out["r95"] is not None and out["r95"] <= 1.0


def test_the_cifar10_command_path(tiny_configs, cifar10_path, tmp_path):  # noqa: F811
    report = run_cifar10(
        backbone=NATIVE_NAME,
        cifar10_path=cifar10_path,
        cache_dir=None,
        feature_dir=tmp_path / "features",
        per_class=3,
        q=0.3,
        views=2,
        budgets=[0.1],
        max_share=0.1,
        seed=1,
        out_dir=tmp_path / "out",
        command="tagsift bench review --per-class 3 --budgets 0.1 --max-share 0.1",
        log=lambda _m: None,
    )
    assert report["items"] == 30 and report["views"] == 2 and report["params"]["method"] == "aligned_head"
    saved = json.loads((tmp_path / "out" / "review.json").read_text())
    assert saved["runs"] == report["runs"] and len(saved["runs"]) == len(ORDERS)
    assert (tmp_path / "out" / "review.png").stat().st_size > 1000
    assert "--per-class 3" in (tmp_path / "out" / "review.md").read_text()
