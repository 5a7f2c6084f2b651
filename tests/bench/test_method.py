"""The method study of `tagsift bench reproduce` (aligned-head names, the digits set, instance-dependent candidate
sets) and `tagsift bench method-report`, on the tiny random-init backbone and synthetic features."""

from __future__ import annotations

import torch

from bench import data as D
from bench import method_report as M
from bench import reproduce as R
from tests.bench.test_reproduce import _data


def test_aligned_head_names_parse_into_configs():
    spec = R.aligned_head_spec("ah-trust-g0.5-k20-p10-lr0.5-e30-ens")
    assert spec.method == "aligned_head" and spec.loss == "rc" and spec.epochs == 30 and spec.lr == 0.5
    assert dict(spec.extra) == {"mix": "trust", "graph_weight": 0.5, "graph_k": 20, "prior_strength": 10.0}
    assert spec.templates and len(spec.templates) == 8
    assert dict(R.aligned_head_spec("ah-self-p1-lr5").extra)["mix_alpha"] == 1.0
    for bad in ("ah-trust-lr1", "ah-nope-p1-lr1", "ah-a0-p1-lr1-x3", "lp-rc"):
        assert R.aligned_head_spec(bad) is None, bad
    assert "ah-a0-p1-lr1" in R.lookup(["ah-a0-p1-lr1", "zs"]) and "ah-a0-p1-lr1" not in R.method_table()


def test_digits_splits_are_disjoint_and_images_are_real():
    digits = D.load_digits_set()
    assert len(digits) == 1797 and digits.classnames[3] == "three"
    assert digits.images[0][:4] == b"\x89PNG"
    splits = D.digits_splits(digits.labels)
    rows = [set(v.tolist()) for v in splits.values()]
    assert sum(len(r) for r in rows) == 1797 and len(set().union(*rows)) == 1797
    for name, per in D.DIGITS_SPLIT.items():
        assert torch.bincount(digits.labels[splits[name]]).tolist() == [per] * 10
    assert int(torch.bincount(digits.labels[splits["pool"]]).min()) >= 80


def test_instance_protocol_and_the_method_report(tiny_native, tmp_path, monkeypatch):
    data = _data(tiny_native)
    data.protocol = "instance"
    data.confuser_split = lambda: data.fewshot(99)
    data.confusion = R._confuser(tiny_native, data, data.confuser_split(), log=lambda m: None)
    mask = data.candidates(data.val, 0.5, 3)
    assert mask[torch.arange(len(data.val.labels)), data.val.labels].all() and torch.equal(
        mask, data.candidates(data.val, 0.5, 3)
    )
    names = ["zs", "lp-rc", "ah-trust-g0.5-p10-lr0.5-e2", "ah-a0-p10-lr0.5-e2"]
    cfg = R.GridConfig(
        out_dir=tmp_path / "out", qs=[0.3, 0.7], seeds=[1], lp_epochs=2, large_qs=[0.3, 0.7], methods=names
    )
    cfg.regime = "both"
    monkeypatch.setattr(R, "LP_LR_GRID", (1.0,))
    records = R.run_grid(data, cfg, log=lambda m: None)
    assert len(records) == 2 * 2 * len(names)
    ah = next(r for r in records if r["method"] == names[2])
    assert ah["protocol"] == "instance" and {"trust", "temperature", "graph_purity"} <= set(ah["prior"])

    md = tmp_path / "results.md"
    md.write_text("# Results\n\nhand-written\n")
    text = M.write_method_report([("synthetic, instance", tmp_path / "out")], names[2], md)
    assert text.startswith("# Results\n\nhand-written\n") and M.GEN_BEGIN in text
    assert "Selection on validation" in text and f"**new default** `{names[2]}`" in text
    assert "best explicit method" in text and "| rank | configuration |" in text
    again = M.write_method_report([("synthetic, instance", tmp_path / "out")], names[2], md)
    assert again.count(M.GEN_BEGIN) == 1
