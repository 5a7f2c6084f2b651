"""End to end on real data: the reference backbone (effnetlite0-minilm) and a small CIFAR-10 subset.

Candidate sets from symmetric flipping (q = 0.3, method.md 2.2) on 16 shots per class; prompt alignment + RC must
disambiguate the training items far better than picking a random candidate, and classify held-out test images
far above chance. Numbers measured on 2 cores: random pick ~0.33, zero-shot ~0.75, trained ~0.79 (train).
"""

from __future__ import annotations

import pytest
import torch

from ml.features import FeatureCache, encode_images
from ml.prompt_learner import PromptLearner, PromptLearnerConfig
from ml.text_encoder import TextEncoder
from ml.train import TrainConfig, fit
from tests.ml.conftest import REFERENCE_CACHE_DIR

pytestmark = pytest.mark.slow


def test_truncation_is_exact_on_the_real_hf_tower(reference_backbone):
    te = TextEncoder(reference_backbone.model)
    names = ["airplane", "automobile", "bird", "cat"]
    pl = PromptLearner(PromptLearnerConfig(n_ctx=16), names, te, reference_backbone.tokenizer, torch.device("cpu"))
    with torch.no_grad():
        prompts = pl()
        te.truncate = False
        full = te(prompts, pl.token_ids)
        te.truncate = True
        short = te(prompts, pl.token_ids)
    assert int(te.real_lengths(pl.token_ids).max()) < pl.token_ids.shape[1]
    assert (full - short).abs().max() < 1e-5


def test_candidate_training_beats_random_candidate(reference_backbone, cifar10_archive):
    from bench.data import load_cifar10, partialize

    train = load_cifar10(cifar10_archive, "train", per_class=16, seed=0)
    test = load_cifar10(cifar10_archive, "test", per_class=10, seed=0)
    cache = FeatureCache(REFERENCE_CACHE_DIR / "features")  # a rerun encodes nothing
    f_train = encode_images(reference_backbone, train.images, shas=train.shas, cache=cache, batch_size=50)
    f_test = encode_images(reference_backbone, test.images, shas=test.shas, cache=cache, batch_size=50)
    k = len(train.classnames)
    cand = partialize(train.labels, k, 0.3, seed=1)
    random_pick = float((1.0 / cand.sum(1).float()).mean())  # expected accuracy of a random candidate

    cfg = TrainConfig(method="prompt_alignment", loss="rc", epochs=8, batch_size=32, seed=1)
    r = fit(
        reference_backbone, f_train, cand, train.classnames, cfg, true_labels=train.labels, val=(f_test, test.labels)
    )
    disamb = float((r.labels == train.labels).float().mean())
    print(f"random candidate {random_pick:.3f}  disambiguation {disamb:.3f}  test {r.history[-1].val_acc:.3f}")
    assert disamb > random_pick + 0.25, (disamb, random_pick)
    assert r.history[-1].val_acc > 0.3  # 10 classes: chance is 0.1


def _real_split(reference_backbone, cifar10_archive):
    from bench.data import load_cifar10

    train = load_cifar10(cifar10_archive, "train", per_class=16, seed=0)
    other = load_cifar10(cifar10_archive, "test", per_class=10, seed=0)
    cache = FeatureCache(REFERENCE_CACHE_DIR / "features")  # shared with the test above: a rerun encodes nothing
    f_train = encode_images(reference_backbone, train.images, shas=train.shas, cache=cache, batch_size=50)
    f_other = encode_images(reference_backbone, other.images, shas=other.shas, cache=cache, batch_size=50)
    return train, f_train, other, f_other


def _default_aligned_head() -> TrainConfig:
    """The aligned head exactly as a job with no parameters gets it (app/job_defaults.py via ml.pipeline)."""
    from app.job_defaults import resolve_job_params
    from app.schemas import JobCreate
    from ml.pipeline import train_config

    params = resolve_job_params(JobCreate().model_dump(), items=160, classes=10)
    assert params["method"] == "aligned_head"
    return train_config(params, "a photo of a {}.")


def test_default_aligned_head_beats_the_prior_it_starts_from(reference_backbone, cifar10_archive):
    """The default method on 16 real images per class (q = 0.5): the candidate sets support the prior (a fair one),
    and training disambiguates at least as well as the zero-shot prior restricted to the candidates."""
    from bench.data import partialize
    from ml.train import disambiguate

    train, f_train, other, f_other = _real_split(reference_backbone, cifar10_archive)
    cand = partialize(train.labels, 10, 0.5, seed=2)
    zs = fit(reference_backbone, f_train, cand, train.classnames, TrainConfig(method="zero_shot"))
    zs_disamb = float((zs.labels == train.labels).float().mean())
    cfg = _default_aligned_head()
    r = fit(reference_backbone, f_train, cand, train.classnames, cfg, true_labels=train.labels)
    disamb = float((r.labels == train.labels).float().mean())
    test_acc = float(
        (disambiguate(f_other[0], r.class_features, r.logit_scale, bias=r.class_bias)[0] == other.labels).float().mean()
    )
    print(f"prior {r.prior}  zero-shot disamb {zs_disamb:.3f}  aligned head disamb {disamb:.3f}  test {test_acc:.3f}")
    assert r.prior["evidence"] > 11 and 0.1 < r.prior["trust"] < 0.8  # a fair prior, supported by the candidate sets
    assert disamb >= zs_disamb - 0.02 and test_acc > 0.3


def test_instance_dependent_sets_from_a_real_confuser(reference_backbone, cifar10_archive):
    """Instance-dependent candidate sets (the second protocol): a linear probe trained with true labels on other
    images decides which wrong tags join; its most confusable wrong tag joins far more often than chance, the
    expected set size is the uniform protocol's, and the default method still disambiguates."""
    import torch.nn.functional as F

    from bench.data import partialize_instance
    from ml.train import class_logits

    train, f_train, other, f_other = _real_split(reference_backbone, cifar10_archive)
    onehot = F.one_hot(other.labels, 10).bool()
    confuser = fit(reference_backbone, f_other, onehot, other.classnames, TrainConfig(method="linear_probe", lr=25.0))
    probs = torch.softmax(class_logits(f_train[0], confuser.class_features, 1.0, confuser.class_bias), dim=1)
    q = 0.3
    cand = partialize_instance(train.labels, probs, q, seed=3)
    n = len(train.labels)
    assert cand[torch.arange(n), train.labels].all()
    assert abs(float(cand.sum(1).float().mean()) - (1 + 9 * q)) < 0.35
    wrong = probs.clone()
    wrong[torch.arange(n), train.labels] = -1
    top_wrong = float(cand[torch.arange(n), wrong.argmax(1)].float().mean())
    assert top_wrong > q + 0.3, top_wrong
    r = fit(reference_backbone, f_train, cand, train.classnames, _default_aligned_head(), true_labels=train.labels)
    disamb = float((r.labels == train.labels).float().mean())
    random_pick = float((1.0 / cand.sum(1).float()).mean())
    print(f"instance sets: top confusable joins {top_wrong:.2f}; disamb {disamb:.3f} vs random {random_pick:.3f}")
    assert disamb > random_pick + 0.15
