"""A step the GradScaler skips (mixed precision: the scaled gradients overflowed) must not break the next step.

On the CPU fit's scaler is a disabled pass-through (amp is CUDA only), so these tests run fit's own steps with a
real, enabled CPU GradScaler (2^16, as on a GPU), and the first backward's gradient of the learner's first weight
is made infinite (what an fp16 overflow of the scaled gradients gives): the scaler skips that step and halves
its scale, and training goes on as it would on a GPU after an early overflow. Before the fix the prompt methods
reused the text features of the skipped step, whose graph that step's backward had freed, and crashed.
"""

from __future__ import annotations

import pytest
import torch

from ml.methods import METHODS
from ml.train import (
    Classifier,
    TrainConfig,
    _epoch,
    _handcrafted_prior,
    _Meta,
    _prepare,
    _trainer,
    views_needed,
)
from tests.ml.conftest import CLASSNAMES
from vocab import LOSSES

TRAINING_METHODS = [name for name, m in METHODS.items() if m.trains]
INIT_SCALE = 2.0**16  # GradScaler's default


def _data(d: int, n: int = 16, views: int = 3):
    g = torch.Generator().manual_seed(3)
    k = len(CLASSNAMES)
    y = torch.randint(0, k, (n,), generator=g)
    mask = torch.rand(n, k, generator=g) < 0.4
    mask[torch.arange(n), y] = True
    return torch.randn(views, n, d, generator=g), mask


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("method", TRAINING_METHODS)
def test_a_skipped_amp_step_does_not_break_the_next(tiny_native, method, loss):
    feats, mask = _data(tiny_native.embed_dim)
    cfg = TrainConfig(method=method, loss=loss, epochs=2, batch_size=8, n_ctx=2, lr=0.01)
    assert views_needed(cfg) <= feats.shape[0]
    data = _prepare(tiny_native, feats, mask, CLASSNAMES, cfg, None, None, None)
    model = Classifier(tiny_native, CLASSNAMES, cfg, data.device)
    hand, prior = _handcrafted_prior(model, tiny_native, cfg, data)
    trainer = _trainer(model, cfg, data, hand, prior, None, _Meta(data.shape, list(CLASSNAMES)))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    weights = [p for p in model.learner().parameters() if p.requires_grad]
    before = [p.detach().clone() for p in weights]
    overflowed: list[bool] = []

    def overflow_once(grad: torch.Tensor) -> torch.Tensor:
        if overflowed:
            return grad
        overflowed.append(True)
        return torch.full_like(grad, float("inf"))

    weights[0].register_hook(overflow_once)

    for epoch in range(cfg.epochs):  # 2 epochs x 2 steps: the skipped one, then three ordinary ones
        metrics = _epoch(trainer, data, cfg, epoch, None)
        assert torch.isfinite(torch.tensor(metrics.loss)), metrics

    assert overflowed and trainer.scaler.get_scale() == INIT_SCALE / 2  # exactly one step was skipped: the first
    after = [p.detach() for p in weights]
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # the later steps trained
    class_feats, _, bias = model.deployable()
    assert bool(torch.isfinite(class_feats).all()) and (bias is None or bool(torch.isfinite(bias).all()))
