"""The handcrafted inference ensemble folds into one class matrix, scale and bias (exactly)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ml.ensemble import handcrafted_features, mix_handcrafted
from ml.knn_vote import prune_candidates


@pytest.mark.parametrize("with_bias", [False, True])
def test_mixed_classifier_equals_the_mix_of_logits(with_bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(20, 8, generator=g), dim=-1)
    c, t = torch.randn(5, 8, generator=g), F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    bias = torch.randn(5, generator=g) if with_bias else None
    s_c, s_h, beta = (1.0, 100.0, 0.5) if with_bias else (100.0, 100.0, 0.25)
    trained = s_c * f @ c.T + (bias if bias is not None else 0)
    hand = s_h * f @ t.T
    mixed = mix_handcrafted(c, s_c, bias, t, s_h, beta)
    got = mixed.logit_scale * f @ mixed.class_features.T + (mixed.bias if mixed.bias is not None else 0)
    torch.testing.assert_close(got, (1 - beta) * trained + beta * hand, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="beta"):
        mix_handcrafted(c, s_c, bias, t, s_h, 1.5)


def test_handcrafted_features_are_normalised_per_class(tiny_native) -> None:
    t = handcrafted_features(tiny_native, ["cat", "dog", "ship"], ("a photo of a {}.", "a {}."))
    assert t.shape == (3, tiny_native.embed_dim)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))


def test_knn_pruning_keeps_the_best_voted_candidate_and_shrinks_sets() -> None:
    # two tight clusters; candidate sets hold the cluster's class plus a random other
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4)[:2] * 10
    labels = torch.tensor([0] * 10 + [1] * 10)
    feats = centres[labels] + 0.01 * torch.randn(20, 4, generator=g)
    mask = torch.zeros(20, 3, dtype=torch.bool)
    mask[torch.arange(20), labels] = True
    mask[torch.arange(20), 2] = torch.rand(20, generator=g) < 0.3
    pruned = prune_candidates(feats, mask, k=5, tau=0.5)
    assert pruned[torch.arange(20), labels].all()  # the true label survives
    assert (pruned & ~mask).sum() == 0 and pruned.sum() < mask.sum()
