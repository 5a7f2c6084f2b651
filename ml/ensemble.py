"""Inference ensemble with the handcrafted prompt (beyond the paper; measured in docs/results.md, point 5).

A trained classifier gives logits  z = s_c · <f̂, C_k> + b_k  (f̂ the L2-normalised image feature; the linear
probe has s_c = 1 and a bias, prompt methods have the CLIP scale and no bias). The handcrafted (zero-shot)
classifier gives  z̃ = s_h · <f̂, T̃_k>. Their mix with weight β,

    (1 - β) z + β z̃ = s_c · <f̂, (1 - β) C_k + β (s_h / s_c) T̃_k> + (1 - β) b_k,

is again one class matrix, one scale and one bias, so it is exported and served exactly like the trained
classifier. On the validation split this helped the linear probe on 500 images per class (+0.3-1.3 points at
β = 0.5 with the 8-template ensemble) and not prompt alignment on 16 shots, which is how the job defaults use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ml.backbone import Backbone
from ml.prompts import ENSEMBLE_TEMPLATES, handcrafted_class_features
from ml.text_encoder import TextEncoder


@dataclass
class LinearClassifier:
    class_features: torch.Tensor  # (K, D)
    logit_scale: float
    bias: torch.Tensor | None  # (K,) or None


def handcrafted_features(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(K, D) L2-normalised zero-shot class features of ``templates`` (an ensemble when several), on the CPU."""
    return handcrafted_class_features(
        TextEncoder(backbone.model), backbone.tokenizer, classnames, templates, backbone.device
    ).cpu()


def mix_handcrafted(
    class_features: torch.Tensor,
    logit_scale: float,
    bias: torch.Tensor | None,
    hand_features: torch.Tensor,
    hand_scale: float,
    beta: float,
) -> LinearClassifier:
    """The classifier of (1 - beta) · trained logits + beta · handcrafted logits (see the module docstring)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    assert class_features.shape == hand_features.shape, (
        f"class features {tuple(class_features.shape)} and handcrafted features {tuple(hand_features.shape)} differ"
    )
    c = class_features.float().cpu()
    rows = (1 - beta) * c + beta * (hand_scale / logit_scale) * hand_features.float().cpu()  # (K, D)
    return LinearClassifier(rows, float(logit_scale), None if bias is None else (1 - beta) * bias.float().cpu())


def deployed_classifier(
    backbone: Backbone,
    result,
    classnames: Sequence[str],
    beta: float,
    templates: Sequence[str] | None = None,
) -> LinearClassifier:
    """The classifier a job deploys from a ``TrainResult``: the trained one, or (beta > 0, not zero-shot) its mix
    with the handcrafted classifier of ``templates`` (default: the 8-template ensemble)."""
    trained = LinearClassifier(result.class_features, result.logit_scale, result.class_bias)
    if beta <= 0 or result.method == "zero_shot":
        return trained
    hand = handcrafted_features(backbone, classnames, templates or ENSEMBLE_TEMPLATES)
    hand_scale = float(backbone.model.logit_scale.exp())
    return mix_handcrafted(trained.class_features, trained.logit_scale, trained.bias, hand, hand_scale, beta)
