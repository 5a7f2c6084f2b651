"""ml/prior.py (the prior read from candidate sets, the feature graph) and bench.data.partialize_instance, on synthetic
tensors whose true labels are known: every estimate is checked against what the labels say."""

from __future__ import annotations

import pytest
import torch

from bench.data import partialize, partialize_instance
from ml.prior import T_RANGE, calibrate_prior, graph_purity, knn_graph, prior_evidence, prior_trust, propagate

K = 10


def _prior_logits(labels: torch.Tensor, accuracy: float, seed: int) -> torch.Tensor:
    """Logits whose argmax is the true label with probability ``accuracy``, else a uniformly random other tag."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    wrong = (labels + torch.randint(1, K, (n,), generator=g)) % K
    top = torch.where(torch.rand(n, generator=g) < accuracy, labels, wrong)
    z = torch.randn(n, K, generator=g)
    z[torch.arange(n), top] += 4.0
    return z


@pytest.mark.parametrize("q", [0.3, 0.7])
@pytest.mark.parametrize("accuracy", [0.1, 0.45, 0.8])
def test_trust_is_the_chance_corrected_accuracy_whatever_q(q, accuracy):
    labels = torch.arange(20_000) % K
    z = _prior_logits(labels, accuracy, seed=1)
    mask = partialize(labels, K, q, seed=2)
    got = prior_trust(z, mask)
    real = float((z.argmax(1) == labels).float().mean())
    assert abs(got["estimate"] - max(0.0, (real - 1 / K) / (1 - 1 / K))) < 0.03, (got, real)
    assert abs(got["chance"] - (1 + q * (K - 1)) / K) < 0.01


def test_trust_is_zero_when_the_sets_say_nothing():
    assert prior_trust(torch.randn(100, K), torch.ones(100, K, dtype=torch.bool))["estimate"] == 0.0


def test_calibration_sharpens_a_good_prior_and_flattens_a_useless_one():
    labels = torch.arange(5000) % K
    mask = partialize(labels, K, 0.3, seed=3)
    good = _prior_logits(labels, 0.9, seed=4) * 10  # overconfident and right: T > 1 but moderate
    useless = torch.randn(5000, K, generator=torch.Generator().manual_seed(5)) * 10
    t_good, b_good = calibrate_prior(good, mask)
    t_bad, _ = calibrate_prior(useless, mask)
    assert t_bad > 10 * t_good, (t_good, t_bad)
    assert t_bad <= T_RANGE[1] and abs(float(b_good.mean())) < 1e-4
    # a prior that favours one tag gets a bias against it
    skewed = good.clone()
    skewed[:, 3] += 20
    _, b = calibrate_prior(skewed, mask)
    assert int(b.argmin()) == 3


@pytest.mark.parametrize("n", [160, 2000])
def test_evidence_keeps_a_real_prior_and_shrinks_a_useless_one_to_nothing(n):
    labels = torch.arange(n) % K
    for q in (0.3, 0.7):
        mask = partialize(labels, K, q, seed=11)
        real = _prior_logits(labels, 0.6, seed=12)
        useless = torch.randn(n, K, generator=torch.Generator().manual_seed(13))
        got = {}
        for name, z in (("real", real), ("useless", useless)):
            t, b = calibrate_prior(z, mask)
            got[name] = prior_evidence(z, mask, t, b)
        assert got["useless"]["shrink"] < 0.3, (n, q, got)
        if n == 160 and q == 0.7:  # 160 items with 7.3 of 10 tags each: little evidence either way
            assert got["real"]["evidence"] > got["useless"]["evidence"], got
        else:
            assert got["real"]["shrink"] > 0.7, (n, q, got)


def test_graph_purity_reads_the_neighbours_agreement_from_candidate_sets():
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(4000) % K
    for noise, q in ((0.3, 0.3), (3.0, 0.3), (0.8, 0.6)):
        centres = torch.randn(K, 64, generator=g)
        feats = centres[labels] + noise * torch.randn(len(labels), 64, generator=g)
        nbrs = knn_graph(feats, 10)
        real = float((labels[nbrs] == labels[:, None]).float().mean())
        est = graph_purity(partialize(labels, K, q, seed=7), nbrs)
        assert abs(est - real) < 0.05, (noise, q, est, real)


def test_knn_graph_excludes_self_and_propagation_stays_in_the_candidates():
    g = torch.Generator().manual_seed(8)
    labels = torch.arange(600) % K
    feats = torch.randn(K, 32, generator=g)[labels] + 0.5 * torch.randn(600, 32, generator=g)
    nbrs = knn_graph(feats, 5, chunk=128)
    assert nbrs.shape == (600, 5) and not (nbrs == torch.arange(600)[:, None]).any()
    mask = partialize(labels, K, 0.5, seed=9)
    out = propagate(mask.float(), mask, nbrs, 0.8)
    assert torch.allclose(out.sum(1), torch.ones(600)) and (out[~mask] == 0).all()
    # neighbours that share the tag make it win: better than a random candidate by far
    acc = float((out.argmax(1) == labels).float().mean())
    assert acc > 0.9 > float((1 / mask.sum(1).float()).mean())


def test_instance_dependent_sets_keep_the_size_and_follow_the_confusions():
    n, q = 20_000, 0.3
    labels = torch.arange(n) % K
    conf = torch.full((n, K), 0.01)
    conf[torch.arange(n), labels] = 0.8
    conf[torch.arange(n), (labels + 1) % K] = 0.15  # the next tag is the confusable one
    mask = partialize_instance(labels, conf, q, seed=10)
    assert mask[torch.arange(n), labels].all()
    assert abs(float(mask.sum(1).float().mean()) - (1 + q * (K - 1))) < 0.05
    confusable = float(mask[torch.arange(n), (labels + 1) % K].float().mean())
    other = float(mask[torch.arange(n), (labels + 5) % K].float().mean())
    assert confusable > 0.9 and other < q, (confusable, other)
    assert torch.equal(mask, partialize_instance(labels, conf, q, seed=10))  # seeded
    assert not partialize_instance(labels, conf, 0.0, seed=10)[torch.arange(n), (labels + 1) % K].any()
