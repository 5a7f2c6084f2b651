"""p ⊙ Y never underflows: with every candidate 200 logits below a non-candidate, softmax(z) ⊙ Y is all zeros in
float32; each loss, the alignment teacher and PiCO's pseudo-labels must still see the candidates' own softmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml.align import teacher
from ml.losses import PLLBatch, build_loss
from vocab import LOSSES

K = 4
# item 0: candidates {1, 2}, class 0 (a non-candidate) 200 above them; item 1: candidates {2, 3}, class 1 200 above
MASK = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
LOGITS = torch.tensor([[200.0, 0.5, -1.0, -300.0], [-5.0, 201.0, 1.0, 0.0]])


def _truth(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax over each row's candidates, in float64: what normalise(softmax(z) ⊙ Y) is exactly."""
    z = logits.double().masked_fill(~mask, float("-inf"))
    return torch.softmax(z, dim=1).float()


def _assert_candidate_distribution(q: torch.Tensor, truth: torch.Tensor) -> None:
    assert bool(torch.isfinite(q).all()), q
    assert bool((q[~MASK] == 0).all()), q  # nothing outside the candidates
    assert torch.allclose(q.sum(1), torch.ones(len(q))), q  # a distribution over the candidates, not zeros
    assert torch.allclose(q, truth, atol=1e-6), (q, truth)


def test_the_product_form_underflows_here():
    """The premise: in float32 the candidates' softmax mass is exactly 0 for both items."""
    assert bool(((F.softmax(LOGITS, dim=1) * MASK).sum(1) == 0).all())


@pytest.mark.parametrize("name", LOSSES)
def test_losses_with_candidates_200_logits_below(name):
    loss = build_loss(name, MASK, epochs=4, feature_dim=8, seed=1)
    feats = [F.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(v)), dim=1) for v in range(3)]
    z = LOGITS.clone().requires_grad_()
    for epoch in (0, 1):  # PLCR's consistency and PiCO's prototype updates start after epoch 0
        loss.set_epoch(epoch)
        batch = PLLBatch(logits=[z, z, z], mask=MASK.float(), index=torch.arange(2), features=feats)
        value = loss(batch)
        assert torch.isfinite(value), (name, epoch, value)
        value.backward()
        assert bool(torch.isfinite(z.grad).all()), (name, z.grad)
        z.grad = None
        if loss.needs_after_step:
            loss.after_step(LOGITS.clone(), batch)
    truth = _truth(LOGITS, MASK)
    if name in ("rc", "plcr"):  # confidences: the candidates' softmax (PLCR: of the mean of three equal views)
        _assert_candidate_distribution(loss.confidence, truth)
    if name == "lws":  # candidate part of the weights
        _assert_candidate_distribution(loss.weight * MASK, truth)
    if name == "pico":  # the pseudo-labels (enqueued with the keys) are the candidates' argmax, never class 0/1
        pseudo = loss.queue_pseudo[:4]
        assert pseudo.tolist() == [1, 2, 1, 2], pseudo
        assert bool(MASK[torch.arange(2).repeat(2), pseudo].all())
        conf = loss.confidence
        assert bool((conf[~MASK] == 0).all()) and torch.allclose(conf.sum(1), torch.ones(2)), conf


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_alignment_teacher_with_candidates_200_logits_below(alpha):
    learned = LOGITS.flip(1)  # its own extremes, at other classes
    q = teacher(LOGITS, MASK.float(), learned, alpha)
    p = (1 - alpha) * torch.softmax(LOGITS.double(), 1) + alpha * torch.softmax(learned.double(), 1)
    truth = (p * MASK) / (p * MASK).sum(1, keepdim=True)  # float64: no underflow at 200 logits
    if alpha == 0.5:  # the learned posterior's candidate mass is not negligible in float64 here: the mix is exact
        assert bool((truth[MASK] > 0).all())
    _assert_candidate_distribution(q, truth.float())
