"""ml/quality.py against the truth on real photos: reference-backbone features of 1,000 CIFAR-10 train images (100
per class, cached), symmetric candidate sets at q = 0.3, a linear probe trained on them (``ml.train.fit``) as the
deployed model, 50 items held out of its training as the audit. The estimate must land near the share of labels
that are really right, with and without the audit; ten audited items all right must not collapse the temperature;
no fold's temperature is fitted on the items it is judged on; and fit()'s per-epoch losses and churn."""

from __future__ import annotations

import math

import pytest
import torch

from ml.calibration import fit_audit_temperature, restricted_log_probs, tag_nll, wilson_interval
from ml.quality import assess, audit_estimate, audit_size
from ml.train import TrainConfig, fit
from tests.ml.conftest import CLASSNAMES, REFERENCE_CACHE_DIR

AUDIT = 50
#: Tolerances (accuracy points) of the estimate against the truth on one run of real photos.
NO_AUDIT_TOL, AUDIT_TOL = 0.05, 0.06


@pytest.fixture(scope="module")
def labelled(reference_backbone, cifar10_archive):
    """(features, truth, mask, logits, audited, classes): the deployed linear probe never saw the audited items."""
    from bench.data import load_cifar10, partialize
    from ml.features import FeatureCache, encode_images

    data = load_cifar10(cifar10_archive, "train", per_class=100, seed=0)
    cache = FeatureCache(REFERENCE_CACHE_DIR / "features")  # encoded once, read back afterwards
    feats = encode_images(reference_backbone, data.images, shas=data.shas, views=1, cache=cache, batch_size=100)
    truth, k = data.labels, len(data.classnames)
    mask = partialize(truth, k, 0.3, seed=3)
    order = torch.randperm(len(truth), generator=torch.Generator().manual_seed(7)).tolist()
    audited = {i: int(truth[i]) for i in order[:AUDIT]}
    keep = torch.ones(len(truth), dtype=torch.bool)
    keep[list(audited)] = False
    cfg = TrainConfig(method="linear_probe", loss="rc", epochs=20, lr=25.0, seed=1)
    r = fit(reference_backbone, feats[:, keep], mask[keep], list(data.classnames), cfg, device="cpu")
    from ml.train import class_logits

    logits = class_logits(feats[0], r.class_features, r.logit_scale, r.class_bias)
    return feats[0], truth, mask, logits, audited, list(data.classnames)


def _true(labels: torch.Tensor, truth: torch.Tensor) -> float:
    return float((labels == truth).float().mean())


def test_without_an_audit_the_estimate_tracks_the_truth(labelled):
    feats, truth, mask, logits, _, classes = labelled
    n = len(truth)
    a = assess(logits, mask, classes=classes, certain=[False] * n, audited={}, features=feats)
    true, e = _true(a.labels, truth), a.report["estimate"]
    raw = float(restricted_log_probs(logits, mask).exp().max(1).values.mean())  # the degenerate T = 1 figure
    print(f"no audit: true {true:.3f} estimate {e['accuracy']:.3f} {e['ci95']} raw mean confidence {raw:.3f}")
    assert e["basis"] == "consistency" and e["audited_items"] == 0
    assert abs(e["accuracy"] - true) <= NO_AUDIT_TOL
    assert e["ci95"][0] <= true <= e["ci95"][1]
    assert a.report["estimated_accuracy"] == e["accuracy"]
    assert f"audit of {audit_size(n)}" in e["warning"] and e["warning"] in a.report["warnings"]
    # the confidences are calibrated: their mean is the estimate, and the flag (< 0.9) separates right from wrong
    assert float(a.confidence.mean()) == pytest.approx(e["accuracy"], abs=0.01)
    right = a.labels == truth
    flagged = a.confidence < 0.9
    assert 0 < int(flagged.sum()) < n
    assert float(right[~flagged].float().mean()) > float(right[flagged].float().mean()) + 0.2
    assert float(right[~flagged].float().mean()) >= 0.85


def test_with_an_audit_the_estimate_is_measured_and_covers_the_truth(labelled):
    feats, truth, mask, logits, audited, classes = labelled
    n = len(truth)
    a = assess(logits, mask, classes=classes, certain=[False] * n, audited=audited, features=feats)
    e = a.report["estimate"]
    true = _true(a.labels, truth)
    print(f"audit {AUDIT}: true {true:.3f} estimate {e['accuracy']:.3f} {e['ci95']} audit {e['audit']}")
    assert e["basis"] == "audit" and e["audited_items"] == AUDIT and a.report["calibration"]["folds"] == 5
    assert all(int(a.labels[i]) == t and float(a.confidence[i]) == 1.0 for i, t in audited.items())
    assert abs(e["accuracy"] - true) <= AUDIT_TOL
    assert e["ci95"][0] <= true <= e["ci95"][1]
    # the audit share is the model's own labels over the audited items' sets, with its Wilson interval
    model = restricted_log_probs(logits, mask).argmax(1)
    right = sum(int(model[i]) == t for i, t in audited.items())
    assert e["audit"]["right"] == right and e["audit"]["ci95"] == [round(x, 4) for x in wilson_interval(right, AUDIT)]
    assert a.report["holdout"]["correct"] == right  # old readers (the model card) keep their figure


def test_ten_audited_items_all_right_do_not_collapse_the_temperature(labelled):
    """The small-hold-out collapse: with 10 audited items all right (likely at 90% accuracy), the unpenalised NLL
    falls as T -> 0 (the old fit: T = 0.024, estimate 98.9% for 63.7% true)."""
    feats, truth, mask, logits, audited, classes = labelled
    n = len(truth)
    model = restricted_log_probs(logits, mask).argmax(1)
    lucky = {i: t for i, t in audited.items() if int(model[i]) == t}
    lucky = dict(sorted(lucky.items())[:10])
    assert len(lucky) == 10
    idx = torch.tensor(sorted(lucky))
    y = torch.tensor([lucky[int(i)] for i in idx])
    nll = [tag_nll(logits[idx], mask[idx], y, t) for t in (0.01, 1.0, 100.0)]
    assert nll[0] <= nll[1] <= nll[2] and nll[0] < nll[2]  # the trap is there: no prior, T runs to its floor
    a = assess(logits, mask, classes=classes, certain=[False] * n, audited=lucky, features=feats)
    e, true = a.report["estimate"], _true(a.labels, truth)
    cal = a.report["calibration"]
    prior = math.exp(cal["prior"]["log_t_mean"])
    print(
        f"10 all right: T {a.temperature:.3g}, folds {cal['fold_temperatures']} (prior {prior:.3g}), "
        f"estimate {e['accuracy']:.3f} true {true:.3f}"
    )
    assert all(t > prior / math.e**2 and t > 0.05 for t in cal["fold_temperatures"]) and a.temperature > 0.05
    assert e["accuracy"] < 0.97  # a lucky audit moves the estimate up, not to ~99%: the interval carries the rest
    assert e["ci95"][0] <= true <= e["ci95"][1]
    assert e["ci95"][1] - e["ci95"][0] >= 0.1  # ten items cannot make a narrow interval


def test_no_fold_temperature_sees_its_own_items():
    g = torch.Generator().manual_seed(0)
    n, k = 200, 5
    truth = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) * 4 + 6 * torch.nn.functional.one_hot(truth, k)
    mask = torch.rand(n, k, generator=g) < 0.5
    mask[torch.arange(n), truth] = True
    model = restricted_log_probs(logits, mask).argmax(1)
    audited = {i: int(truth[i]) for i in range(0, n, 4)}  # 50 items
    rest = torch.tensor([i for i in range(n) if i not in audited])
    est = audit_estimate(logits, mask, model, audited, rest, prior_t=1.0, seed=3)
    folds = est["folds"]
    assert sorted(i for f in folds for i in f) == sorted(audited) and len(folds) == 5
    for f, t in zip(folds, est["fold_temperatures"], strict=True):
        others = torch.tensor(sorted(set(audited) - set(f)))
        y = torch.tensor([audited[int(i)] for i in others])
        assert t == pytest.approx(fit_audit_temperature(logits[others], mask[others], y, 1.0), rel=1e-6)
        mine = torch.tensor(f)
        y_mine = torch.tensor([audited[i] for i in f])
        with_mine = fit_audit_temperature(
            logits[torch.cat([others, mine])], mask[torch.cat([others, mine])], torch.cat([y, y_mine]), 1.0
        )
        assert t != pytest.approx(with_mine, rel=1e-3)  # the fold's own items would have moved it


def test_audit_interval_covers_on_simulated_audits():
    """Many audits of a model whose confidences are miscalibrated (T = 3 too sharp): the prediction-powered
    interval covers the truth in at least 90% of them."""
    g = torch.Generator().manual_seed(5)
    n, k = 3000, 6
    logits = torch.randn(n, k, generator=g) * 3
    probs = torch.softmax(logits / 3.0, dim=1)  # the truth follows T = 3: the raw logits are over-confident
    mask = torch.ones(n, k, dtype=torch.bool)
    covered, errors = 0, []
    for s in range(40):
        truth = torch.multinomial(probs, 1, generator=g).squeeze(1)
        order = torch.randperm(n, generator=g)[:AUDIT].tolist()
        audited = {i: int(truth[i]) for i in order}
        a = assess(logits, mask, classes=[str(c) for c in range(k)], certain=[False] * n, audited=audited, seed=s)
        e, true = a.report["estimate"], _true(a.labels, truth)
        covered += e["ci95"][0] <= true <= e["ci95"][1]
        errors.append(abs(e["accuracy"] - true))
    assert covered >= 36, covered
    assert sum(errors) / len(errors) < 0.06


def test_certain_items_are_right_but_never_the_yardstick():
    g = torch.Generator().manual_seed(2)
    n, k = 100, 4
    logits = torch.randn(n, k, generator=g)
    mask = torch.ones(n, k, dtype=torch.bool)
    certain = [i < 30 for i in range(n)]
    mask[:30] = False
    mask[torch.arange(30), 0] = True  # a certain item's set is its tag
    a = assess(logits, mask, classes=list("abcd"), certain=certain, audited={}, features=None)
    e = a.report["estimate"]
    assert e["basis"] == "none" and e["certain_items"] == 30 and e["audited_items"] == 0
    assert torch.all(a.confidence[:30] == 1.0) and torch.all(a.labels[:30] == 0)
    assert e["ci95"][0] == pytest.approx(0.3, abs=1e-4) and e["ci95"][1] == 1.0
    assert "audit of 50" in e["warning"]


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)  # the textbook example: 0.4902 .. 0.9433
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert [audit_size(n) for n in (10, 200, 2000, 10_000)] == [10, 50, 100, 300]


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
