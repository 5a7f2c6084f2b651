"""`tagsift bench reproduce` on a tiny random-init backbone and synthetic features: JSON cells, tables, PNG."""

from __future__ import annotations

import json

import torch

from bench import reproduce as R
from bench.data import Split
from ml.knn_vote import neighbour_votes, prune_candidates
from tests.ml.conftest import CLASSNAMES


def _data(backbone) -> R.BenchData:
    g = torch.Generator().manual_seed(0)
    k, d = len(CLASSNAMES), backbone.embed_dim
    centres = torch.randn(k, d, generator=g)

    def split(n_per: int, views: int, seed: int) -> Split:
        gg = torch.Generator().manual_seed(seed)
        labels = torch.arange(k).repeat_interleave(n_per)
        feats = centres[labels] + 0.5 * torch.randn(views, len(labels), d, generator=gg)
        return Split(feats, labels, torch.arange(len(labels)))

    return R.BenchData(
        backbone, CLASSNAMES, lambda s: split(4, 3, s), split(3, 1, 100), split(5, 1, 200), lambda: split(8, 1, 300)
    )


def test_quick_grid_writes_json_tables_and_png(tiny_native, tmp_path, monkeypatch):
    cfg = R.GridConfig(
        out_dir=tmp_path / "out",
        qs=[0.3],
        seeds=[1],
        epochs=1,
        lp_epochs=2,
        large_epochs=1,
        methods=list(R.QUICK_METHODS) + ["sup-coop", "pamix-rc"],
        regime="both",
        commit="abc123",
    )
    monkeypatch.setattr(R, "LP_LR_GRID", (1.0,))  # the LR search is not under test here
    records = R.run_grid(_data(tiny_native), cfg, log=lambda m: None)
    names = {(r["regime"], r["method"], r["q"]) for r in records}
    assert ("fewshot", "sup-coop", 0.0) in names and ("fewshot", "pa-rc", 0.3) in names
    assert ("large", "knn-pa-rc", 0.3) in names
    cells = sorted((tmp_path / "out" / "cells").glob("*.json"))
    assert len(cells) == len(records)
    rec = json.loads((tmp_path / "out" / "cells" / "fewshot__pa-rc__q0.3__s1.json").read_text())
    for key in ("test_acc", "val_acc", "disamb_acc", "wall_s", "ens", "commit"):
        assert key in rec
    assert 0.0 <= rec["test_acc"] <= 1.0 and rec["test_n"] == 5 * len(CLASSNAMES)
    assert set(rec["ens"]) == {str(b) for b in R.ENS_BETAS}

    assert R.posthoc_ensembles(tmp_path / "out", _data(tiny_native), log=lambda m: None) > 0
    rec = json.loads((tmp_path / "out" / "cells" / "fewshot__pa-rc__q0.3__s1.json").read_text())
    assert set(rec["ens8"]) == {str(b) for b in R.ENS_BETAS} and "test_acc" in rec["ens8"]["0.5"]

    # resume: nothing is run again
    assert R.run_grid(_data(tiny_native), cfg, log=lambda m: None) == []

    md, png = tmp_path / "docs" / "results.md", tmp_path / "docs" / "results-accuracy-vs-q.png"
    md.parent.mkdir()
    md.write_text(f"# Results\n\nhand-written intro\n\n{R.GEN_BEGIN}\nold\n{R.GEN_END}\n\nhand-written discussion\n")
    text = R.write_report(tmp_path / "out", md, png)
    assert png.is_file() and png.stat().st_size > 1000
    assert "hand-written intro" in text and "hand-written discussion" in text and "\nold\n" not in text
    for label in (
        "zero-shot (a photo of a {}.)",
        "CoOp + RC",
        "PA (a=0) + RC",
        "PA mixed + RC",
        "linear probe + RC",
        "CoOp, true labels (q=0)",
        "kNN-pruned sets, PA + RC",
    ):
        assert f"| {label} |" in text
    assert "| q=0 | q=0.3 |" in text and "Large regime" in text and "abc123" in text
    assert "8-template handcrafted, b=0.5" in text and "large regime (validation" in text


def test_reevaluate_on_more_test_images(tiny_native, tmp_path, monkeypatch):
    data = _data(tiny_native)
    small = Split(data.test.features[:, :10], data.test.labels[:10], torch.arange(10))
    data.test = small
    cfg = R.GridConfig(out_dir=tmp_path, qs=[0.5], seeds=[2], lp_epochs=2, methods=["zs", "lp-rc"])
    monkeypatch.setattr(R, "LP_LR_GRID", (1.0,))
    R.run_grid(data, cfg, log=lambda m: None)
    full = _data(tiny_native).test
    assert R.reevaluate(tmp_path, full, log=lambda m: None) == 2
    rec = json.loads((tmp_path / "cells" / "fewshot__zs__q0.5__s2.json").read_text())
    assert rec["test_n"] == len(full.labels)


def test_plan_orders_q03_first_and_supervised_once():
    cfg = R.GridConfig(out_dir=None, qs=[0.1, 0.3], seeds=[1, 2, 3], methods=["coop-rc", "zs", "sup-lp"])
    cells = R.plan(cfg, "fewshot")
    assert cells[0] == ("zs", 0.3, 1)
    assert [c for c in cells if c[0] == "sup-lp"] == [("sup-lp", 0.0, 1), ("sup-lp", 0.0, 2), ("sup-lp", 0.0, 3)]
    assert len(cells) == 3 * 2 * 2 + 3


def test_neighbour_votes_prune_towards_the_true_label():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(10)
    feats = torch.eye(4)[labels] * 5 + 0.1 * torch.randn(40, 4, generator=g)
    mask = torch.rand(40, 4, generator=g) < 0.5
    mask[torch.arange(40), labels] = True
    v = neighbour_votes(feats, mask, k=5)
    assert ((v > 0) <= mask).all()
    pruned = prune_candidates(feats, mask, k=5, tau=0.9)
    assert (pruned <= mask).all() and pruned.any(1).all()
    assert pruned[torch.arange(40), labels].all()
    assert pruned.sum() < mask.sum()
