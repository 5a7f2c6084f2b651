"""Handcrafted prompts: per-dataset templates (CoOpPLL `CUSTOM_TEMPLATES`) and template ensembles."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ml.text_encoder import TextEncoder

DEFAULT_TEMPLATE = "a photo of a {}."

# One template per dataset, as in the official code (method.md 1.1).
DATASET_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
    "stanford_cars": DEFAULT_TEMPLATE,
    "sun397": DEFAULT_TEMPLATE,
    "caltech101": DEFAULT_TEMPLATE,
    "imagenet": DEFAULT_TEMPLATE,
    "cifar10": DEFAULT_TEMPLATE,
    "cifar100": DEFAULT_TEMPLATE,
}

# A small generic ensemble (a subset of the OpenAI CIFAR/ImageNet prompt sets).
ENSEMBLE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a low resolution photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "itap of a {}.",
)


def template_for(dataset: str) -> str:
    """The handcrafted template for a dataset name (default "a photo of a {}." when unknown)."""
    return DATASET_TEMPLATES.get(dataset.lower().replace("-", "_"), DEFAULT_TEMPLATE)


def clean_classname(name: str) -> str:
    """CoOp convention: "_" becomes a space."""
    return name.replace("_", " ").strip()


def validate_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Each template must contain exactly one "{}" slot; at least one template."""
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates: at least one handcrafted template is required")
    for i, t in enumerate(templates):
        if t.count("{}") != 1:
            raise ValueError(f"template {i} ({t!r}): must contain exactly one '{{}}' for the class name")
    return templates


@torch.no_grad()
def handcrafted_class_features(
    text_encoder: TextEncoder, tokenizer, classnames: Sequence[str], templates: Sequence[str], device: torch.device
) -> torch.Tensor:
    """(K, D) L2-normalised handcrafted class features.

    t̃_k = normalise(mean_t normalise(h(tok(template_t with "{}" -> class_k)))); one template is the plain CoOpPLL
    teacher, several form an ensemble (open_clip `build_zero_shot_classifier` convention).
    """
    templates = validate_templates(templates)
    names = [clean_classname(c) for c in classnames]
    feats = []
    for t in templates:
        ids = tokenizer([t.replace("{}", n) for n in names]).to(device)  # [K, L]; other braces stay as written
        feats.append(F.normalize(text_encoder.encode_ids(ids), dim=-1))  # [K, D]
    return F.normalize(torch.stack(feats).mean(dim=0), dim=-1)  # [K, D]
