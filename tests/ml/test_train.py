"""fit(): outputs, callbacks, cancel, exact resume, baselines and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml.train import (
    EpochMetrics,
    TrainConfig,
    TrainingCancelled,
    candidates_to_mask,
    disambiguate,
    fit,
)
from tests.ml.conftest import CLASSNAMES


def _data(bb, n=24, views=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = len(CLASSNAMES)
    y = torch.randint(0, k, (n,), generator=g)
    mask = torch.rand(n, k, generator=g) < 0.35
    mask[torch.arange(n), y] = True
    mask[0] = False
    mask[0, y[0]] = True  # one item with a single candidate
    feats = torch.randn(views, n, bb.embed_dim, generator=g)
    return feats, mask, y


def test_fit_outputs_and_callbacks(tiny_backbone):
    feats, mask, y = _data(tiny_backbone)
    seen: list[EpochMetrics] = []
    val = (feats[0, :10], y[:10])
    cfg = TrainConfig(epochs=3, batch_size=8, n_ctx=4)
    r = fit(tiny_backbone, feats, mask, CLASSNAMES, cfg, true_labels=y, val=val, on_epoch=seen.append)
    n, k = mask.shape
    assert r.labels.shape == (n,) and r.confidence.shape == (n,) and r.margin.shape == (n,)
    assert bool(mask[torch.arange(n), r.labels].all()), "a label outside the item's candidate set"
    assert torch.isclose(r.confidence[0], torch.tensor(1.0)) and torch.isclose(r.margin[0], torch.tensor(1.0))
    assert bool(((r.margin >= 0) & (r.margin <= r.confidence + 1e-6)).all())
    assert r.class_features.shape == (k, tiny_backbone.embed_dim)
    assert torch.allclose(r.class_features.norm(dim=1), torch.ones(k), atol=1e-5)
    assert r.logit_scale == pytest.approx(float(tiny_backbone.model.logit_scale.exp()))
    assert [m.epoch for m in seen] == [1, 2, 3] and seen == r.history
    assert all(m.train_acc is not None and m.val_acc is not None and m.loss > 0 for m in seen)
    labels, conf, margin = disambiguate(feats[0], r.class_features, r.logit_scale, mask)
    assert torch.equal(labels, r.labels) and torch.allclose(conf, r.confidence)


@pytest.mark.parametrize(
    ("method", "loss", "mix"),
    [
        ("prompt_alignment", "rc", "none"),
        ("prompt_alignment", "pico", "ramp"),
        ("coop", "plcr", "none"),
        ("coop", "lws", "none"),
        ("linear_probe", "cc", "none"),
    ],
)
def test_resume_equals_uninterrupted(tiny_native, tmp_path, method, loss, mix):
    feats, mask, y = _data(tiny_native)
    cfg = TrainConfig(method=method, loss=loss, mix=mix, epochs=4, batch_size=8, n_ctx=4, lr=0.05, seed=7)
    full = fit(tiny_native, feats, mask, CLASSNAMES, cfg, true_labels=y)

    ckpt = tmp_path / "run.pt"
    calls = {"n": 0}

    def cancel_in_epoch_3() -> bool:  # 3 steps per epoch: cancel at the first step of epoch 3
        calls["n"] += 1
        return calls["n"] > 6

    with pytest.raises(TrainingCancelled):
        fit(
            tiny_native,
            feats,
            mask,
            CLASSNAMES,
            cfg,
            true_labels=y,
            checkpoint_path=ckpt,
            should_cancel=cancel_in_epoch_3,
        )
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2
    resumed = fit(tiny_native, feats, mask, CLASSNAMES, cfg, true_labels=y, checkpoint_path=ckpt)
    assert torch.allclose(resumed.class_features, full.class_features, atol=1e-6)
    assert torch.equal(resumed.labels, full.labels)
    assert torch.allclose(resumed.confidence, full.confidence, atol=1e-6)
    assert [h.loss for h in resumed.history] == pytest.approx([h.loss for h in full.history], abs=1e-6)
    if method == "linear_probe":
        assert torch.allclose(resumed.class_bias, full.class_bias, atol=1e-6)


def test_resume_rejects_a_foreign_checkpoint(tiny_native, tmp_path):
    feats, mask, y = _data(tiny_native)
    ckpt = tmp_path / "run.pt"
    fit(tiny_native, feats, mask, CLASSNAMES, TrainConfig(epochs=1, n_ctx=4), checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="different data or config"):
        fit(tiny_native, feats, mask, CLASSNAMES, TrainConfig(epochs=1, n_ctx=5), checkpoint_path=ckpt)


def test_training_moves_towards_candidates_and_only_ctx_changes(tiny_native):
    """Seeded determinism, frozen backbone, and that learning separates well-clustered features."""
    bb = tiny_native
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    k = len(CLASSNAMES)
    g = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(k, bb.embed_dim, generator=g), dim=1)
    y = torch.arange(60) % k
    feats = (centres[y] + 0.05 * torch.randn(60, bb.embed_dim, generator=g)).unsqueeze(0)
    mask = torch.rand(60, k, generator=g) < 0.3
    mask[torch.arange(60), y] = True
    cfg = TrainConfig(method="coop", loss="rc", epochs=15, batch_size=16, n_ctx=4, lr=0.5, csc=True)
    r1 = fit(bb, feats, mask, CLASSNAMES, cfg, true_labels=y)
    r2 = fit(bb, feats, mask, CLASSNAMES, cfg, true_labels=y)
    assert torch.equal(r1.class_features, r2.class_features)
    assert all(torch.equal(before[k], v) for k, v in bb.model.state_dict().items())
    random_pick = float((1 / mask.sum(1).float()).mean())  # expected accuracy of a random candidate
    accs = [h.train_acc for h in r1.history]
    assert accs[-1] > accs[0] and accs[-1] > random_pick + 0.25, (accs, random_pick)


def test_zero_shot_and_template_ensemble(tiny_hf):
    feats, mask, _ = _data(tiny_hf)
    one = fit(tiny_hf, feats, mask, CLASSNAMES, TrainConfig(method="zero_shot"))
    ens = fit(
        tiny_hf, feats, mask, CLASSNAMES, TrainConfig(method="zero_shot", templates=("a photo of a {}.", "a {}."))
    )
    assert one.history == [] and not torch.allclose(one.class_features, ens.class_features)
    with pytest.raises(ValueError, match="exactly one"):
        fit(tiny_hf, feats, mask, CLASSNAMES, TrainConfig(method="zero_shot", templates=("no slot",)))


def test_linear_probe_fold_matches_its_logits(tiny_native):
    from ml.linear_probe import LinearProbe

    probe = LinearProbe(tiny_native.embed_dim, 5, seed=3)
    probe.train()
    for _ in range(3):
        probe(F.normalize(torch.randn(16, tiny_native.embed_dim), dim=1))  # accumulate running stats
    probe.eval()
    f = F.normalize(torch.randn(7, tiny_native.embed_dim), dim=1)
    a, b = probe.folded()
    assert torch.allclose(f @ a.T + b, probe(f), atol=1e-4)


def test_candidates_to_mask_and_bad_input(tiny_native):
    m = candidates_to_mask([["cat"], ["dog", "bird"]], CLASSNAMES)
    assert m.tolist()[1] == [False, True, False, False, True]
    with pytest.raises(ValueError, match=r"item 1: empty candidate set"):
        candidates_to_mask([["cat"], []], CLASSNAMES)
    with pytest.raises(ValueError, match=r"item 0: candidate 'horse' is not in the class list"):
        candidates_to_mask([["horse"]], CLASSNAMES)
    with pytest.raises(ValueError, match="at least 2 classes"):
        candidates_to_mask([["cat"]], ["cat"])
    with pytest.raises(ValueError, match=r"class 2: duplicate class name 'cat'"):
        candidates_to_mask([["cat"]], ["cat", "dog", "cat"])
    feats, mask, _ = _data(tiny_native)
    bad = mask.clone()
    bad[5] = False
    with pytest.raises(ValueError, match="item 5: empty candidate set"):
        fit(tiny_native, feats, bad, CLASSNAMES, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="duplicate class name"):
        fit(tiny_native, feats, mask, ["cat", "dog", "cat", "truck", "bird"], TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit(tiny_native, feats, mask[:, :1], ["cat"], TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="loss"):
        fit(tiny_native, feats, mask, CLASSNAMES, TrainConfig(loss="nope"))
