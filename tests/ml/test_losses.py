"""PLL objectives: formulas on hand-made logits, state updates, and that gradients reach only what trains."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ml.align import align_loss, combine, mix_alpha, teacher
from ml.losses import LOSSES, PLLBatch, build_loss
from ml.prompts import handcrafted_class_features
from ml.train import Classifier, TrainConfig, step_loss
from tests.ml.conftest import CLASSNAMES

LOSS_NAMES = ["naive", "cc", "rc", "lws", "cavl", "plcr", "pico"]


def _batch(logits: torch.Tensor, mask: torch.Tensor) -> PLLBatch:
    return PLLBatch(logits=[logits], mask=mask.float(), index=torch.arange(len(logits)))


def test_formulas_on_known_logits():
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.5, 3.0]])
    y = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    p = F.softmax(z, 1)
    b = _batch(z, y)
    naive = build_loss("naive", y, epochs=1, feature_dim=4)(b)
    assert torch.isclose(naive, -(torch.log(p[0, :2]).mean() + torch.log(p[1, 1])) / 2)
    cc = build_loss("cc", y, epochs=1, feature_dim=4)(b)
    assert torch.isclose(cc, -(torch.log(p[0, :2].sum() + 1e-7) + torch.log(p[1, 1] + 1e-7)) / 2, atol=1e-6)
    rc = build_loss("rc", y, epochs=1, feature_dim=4)
    assert torch.isclose(rc(b), naive)  # c = Y/|S| at init: RC starts as NAIVE
    rc.after_step(z, b)
    assert torch.allclose(rc.confidence[0], torch.cat([p[0, :2] / p[0, :2].sum(), torch.zeros(1)]), atol=1e-6)
    assert torch.allclose(rc.confidence[1], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    cavl = build_loss("cavl", y, epochs=1, feature_dim=4)(b)  # cav = z|1-z|: item 0 -> class 0 (2 vs 0)
    assert torch.isclose(cavl, F.cross_entropy(z, torch.tensor([0, 1])))
    lws = build_loss(
        "lws",
        y,
        epochs=1,
        feature_dim=4,
    )(b)
    w = 1 / 3
    expect = (w * (-torch.log(p) * y).sum() + w * (-torch.log(1 - p + 1e-8) * ~y).sum()) / 2
    assert torch.isclose(lws, expect, atol=1e-6)


def test_plcr_ramp_and_confidence_update():
    y = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    z = torch.tensor([[1.0, 0.0, 0.0]])
    loss = build_loss("plcr", y, epochs=10, feature_dim=4)
    loss.set_epoch(0)
    b = PLLBatch(logits=[z, z, z], mask=y.float(), index=torch.tensor([0]))
    l0 = loss(b)  # λ_0 = 0: only the non-candidate term
    assert torch.isclose(l0, -torch.log(1.0000001 - F.softmax(z, 1)[0, 2]))
    p = F.softmax(z, 1)[0]
    assert torch.allclose(loss.confidence[0], torch.cat([p[:2] / p[:2].sum(), torch.zeros(1)]), atol=1e-6)


def test_alignment_teacher_and_weighting():
    hand = torch.tensor([[3.0, 1.0, 0.0]])
    learned = torch.tensor([[0.0, 3.0, 0.0]])
    y = torch.tensor([[1.0, 1.0, 0.0]])
    q = teacher(hand, y)
    ph = F.softmax(hand, 1)[0]
    assert torch.allclose(q[0], torch.cat([ph[:2] / ph[:2].sum(), torch.zeros(1)]))
    qm = teacher(hand, y, learned, alpha=0.5)
    mixed = (0.5 * ph + 0.5 * F.softmax(learned, 1)[0]) * y[0]
    assert torch.allclose(qm[0], mixed / mixed.sum())
    z = torch.randn(1, 3, requires_grad=True)
    pll = F.cross_entropy(z, torch.tensor([0]))
    la = align_loss(z, q)
    total = combine(pll, la)
    assert torch.isclose(total, 2 * pll)  # the alignment term carries the PLL loss's value
    assert mix_alpha("none", 0.7, 3, 10) == 0 and mix_alpha("constant", 0.7, 3, 10) == 0.7
    assert mix_alpha("ramp", 0.7, 0, 10) == 0 and math.isclose(mix_alpha("ramp", 0.7, 9, 10), 0.7)


@pytest.mark.parametrize("loss_name", LOSS_NAMES)
@pytest.mark.parametrize("method", ["prompt_alignment", "coop", "linear_probe"])
def test_gradients_reach_only_trainable_weights(tiny_native, loss_name, method):
    bb = tiny_native
    torch.manual_seed(0)
    n, k = 12, len(CLASSNAMES)
    cfg = TrainConfig(method=method, loss=loss_name, n_ctx=4)
    model = Classifier(bb, CLASSNAMES, cfg, torch.device("cpu"))
    mask = torch.rand(n, k) < 0.4
    mask[:, 0] = True
    loss_fn = build_loss(loss_name, mask, epochs=2, feature_dim=bb.embed_dim)
    loss_fn.set_epoch(1)  # PiCO: SupCon positives + prototype updates; PLCR: λ > 0
    feats = [F.normalize(torch.randn(n, bb.embed_dim), dim=1) for _ in range(loss_fn.n_views)]
    hand = None
    if method == "prompt_alignment":
        hand = handcrafted_class_features(model.text_encoder, bb.tokenizer, CLASSNAMES, cfg.templates, "cpu")
    batch = PLLBatch(logits=[], mask=mask.float(), index=torch.arange(n), features=feats)
    loss = step_loss(model, loss_fn, batch, method, hand)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in bb.model.parameters()), "the frozen backbone received a gradient"
    own = [p for p in model.learner().parameters() if p.requires_grad]
    assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    extra = loss_fn.trainable_parameters()
    if loss_name == "pico":
        assert extra and all(p.grad is not None for p in extra)  # the projection head trains on L_cont
    else:
        assert extra == []
    if method != "linear_probe":
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]


def test_registry_covers_the_method_list():
    assert set(LOSS_NAMES) <= set(LOSSES)
    with pytest.raises(ValueError, match="unknown PLL loss"):
        build_loss("nope", torch.ones(2, 2, dtype=torch.bool), epochs=1, feature_dim=2)
