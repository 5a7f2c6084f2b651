"""ml/quality.py and what fit()/run_job() report for it: hold-out, Wilson interval, temperature, expected accuracy,
per-epoch PLL and alignment losses and label churn."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ml.quality import (
    HOLDOUT_SHARE,
    MIN_HOLDOUT_ITEMS,
    calibrate,
    choose_holdout,
    fit_temperature,
    quality_report,
    wilson_interval,
)
from ml.train import TrainConfig, fit
from tests.ml.conftest import CLASSNAMES


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)  # the textbook example: 0.4902 .. 0.9433
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_holdout_needs_enough_informative_certain_items_and_is_stratified():
    need = math.ceil(MIN_HOLDOUT_ITEMS / HOLDOUT_SHARE)
    tags = ["a", "b", "c"]
    certain = [tags[i % 3] for i in range(need - 1)]
    cands = [["a", "b", "c"]] * len(certain)
    assert choose_holdout(certain, cands, seed=1) == []  # one short of the threshold
    certain += ["a", None, None]
    cands += [["a", "b"], ["a", "b"], ["b", "c"]]
    assert len(choose_holdout(certain, cands, seed=1)) == MIN_HOLDOUT_ITEMS
    # a certain item whose original set is only its tag is right whatever the model says: never eligible
    assert choose_holdout(["a"] * 200, [["a"]] * 200, seed=1) == []
    many = [tags[i % 3] for i in range(300)]
    held = choose_holdout(many, [["a", "b", "c"]] * 300, seed=4)
    assert len(held) == 60 and {many[i] for i in held} == set(tags)
    assert [sum(many[i] == t for i in held) for t in tags] == [20, 20, 20]
    assert held == choose_holdout(many, [["a", "b", "c"]] * 300, seed=4) != choose_holdout(many, [["a"]] * 300, 5)


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    g = torch.Generator().manual_seed(0)
    n, k, t_true = 4000, 5, 3.0
    logits = torch.randn(n, k, generator=g) * 6
    target = torch.multinomial(F.softmax(logits / t_true, dim=1), 1, generator=g).squeeze(1)
    mask = torch.ones(n, k, dtype=torch.bool)
    assert fit_temperature(logits, mask, target) == pytest.approx(t_true, rel=0.1)


def test_calibrate_methods():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 4, generator=g) * 50  # over-confident
    mask = torch.rand(30, 4, generator=g) < 0.5
    mask[:, 0] = True
    target = torch.zeros(12, dtype=torch.long)
    hold = calibrate(logits, mask, list(range(12)), mask[:12], target, list(range(12, 30)))
    assert hold["method"] == "holdout" and hold["items"] == 12 and hold["nll_after"] <= hold["nll_before"] + 1e-9
    cand = calibrate(logits, mask, [], None, None, list(range(30)))
    assert cand["method"] == "candidate_likelihood" and cand["temperature"] >= 1.0
    assert cand["nll_after"] <= cand["nll_before"] + 1e-9
    single = torch.zeros(30, 4, dtype=torch.bool)
    single[:, 1] = True
    none = calibrate(logits, single, [], None, None, list(range(30)))
    assert none["method"] == "none" and none["temperature"] == 1.0


def test_quality_report_counts_certain_items_as_right():
    conf = torch.tensor([1.0, 1.0, 0.5, 0.7])
    history = []
    cal = {"method": "none", "temperature": 1.0, "items": 0, "nll_before": None, "nll_after": None}
    q = quality_report(
        confidence=conf,
        certain=[True, True, False, False],
        holdout_correct=torch.tensor([True, True, False]),
        holdout_correct_any_class=torch.tensor([True, False, False]),
        calibration=cal,
        history=history,
    )
    assert q["estimated_accuracy"] == pytest.approx((2 + 0.5 + 0.7) / 4, abs=1e-4)
    assert q["estimated_accuracy_model_labels"] == pytest.approx(0.6, abs=1e-4)
    assert q["holdout"]["accuracy"] == pytest.approx(2 / 3, abs=1e-4) and q["holdout"]["items"] == 3
    lo, hi = q["holdout"]["ci95"]
    assert lo < 2 / 3 < hi and q["holdout"]["accuracy_any_class"] == pytest.approx(1 / 3, abs=1e-4)
    assert any("not calibrated" in w for w in q["warnings"])


def test_fit_reports_pll_and_alignment_losses_apart_and_label_churn(tiny_native):
    g = torch.Generator().manual_seed(0)
    n, k = 24, len(CLASSNAMES)
    y = torch.randint(0, k, (n,), generator=g)
    mask = torch.rand(n, k, generator=g) < 0.5
    mask[torch.arange(n), y] = True
    feats = torch.randn(2, n, tiny_native.embed_dim, generator=g)
    cfg = TrainConfig(method="prompt_alignment", loss="rc", epochs=3, batch_size=8, n_ctx=4, lr=0.5)
    val = (feats[0, :6], y[:6], mask[:6])
    r = fit(tiny_native, feats, mask, CLASSNAMES, cfg, val=val)
    h = r.history
    assert all(m.pll_loss > 0 and m.align_loss > 0 and m.val_acc is not None for m in h)
    # the optimised loss is L_PLL + L_align scaled to L_PLL's value: twice the PLL loss
    assert all(m.loss == pytest.approx(2 * m.pll_loss, rel=1e-5) for m in h)
    assert h[0].label_churn is None and all(0.0 <= m.label_churn <= 1.0 for m in h[1:])
    coop = fit(tiny_native, feats, mask, CLASSNAMES, TrainConfig(method="coop", epochs=1, n_ctx=4))
    assert coop.history[0].align_loss is None and coop.history[0].pll_loss == pytest.approx(coop.history[0].loss)
