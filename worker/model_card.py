"""The Markdown model card stored next to a job's head and the image tower it runs on."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from app.config import REFERENCE_BACKBONE, get_settings


def quality_lines(quality: dict | None) -> list[str]:
    """The card's "Label quality" section: the job's quality report in words, then in full (JSON)."""
    if not quality:
        return []
    lines = ["## Label quality (measured without true labels)", ""]
    lines.append(
        f"- Estimated share of correct labels in the dataset: **{quality['estimated_accuracy']:.1%}** "
        f"(certain items count as right; every other item its calibrated confidence)"
    )
    hold = quality.get("holdout")
    if hold:
        lo, hi = hold["ci95"]
        lines.append(
            f"- Held-out items with a known tag: {hold['correct']}/{hold['items']} labelled right, "
            f"**{hold['accuracy']:.1%}** (95% Wilson interval {lo:.1%} to {hi:.1%})"
        )
    cal = quality["calibration"]
    lines.append(f"- Confidence calibration: {cal['method']}, temperature {cal['temperature']:.4g}")
    if quality.get("needs_review") is not None:
        lines.append(f"- Items flagged for review: {quality['needs_review']}")
    lines += [f"- Warning: {w}" for w in quality.get("warnings", [])]
    lines += ["", "```json", json.dumps(quality, indent=2, sort_keys=True), "```", ""]
    return lines


def model_card(job, cfg, metrics: dict, model_id: str) -> str:
    """A short Markdown model card stored next to the head and its tower."""
    reference = get_settings().backbone.strip() == REFERENCE_BACKBONE
    caveat = (
        "**Caveat:** this model uses the offline *reference* backbone (EfficientNet-Lite0 image tower + MiniLM text "
        "tower aligned on a small corpus). It is **not CLIP**: expect much lower accuracy than an open_clip "
        "backbone such as ViT-B-32/laion2b; use it for offline tests and demos."
        if reference
        else "The backbone is frozen; only the prompt context (or probe) was trained on this dataset."
    )
    shown = {k: v for k, v in metrics.items() if v is not None and k != "quality"}
    lines = [
        f"# Model {model_id}",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"- Job: {job.job_id}; dataset: {job.dataset_id}",
        f"- Backbone: `{metrics['backbone']}` (id `{metrics['backbone_id']}`)",
        f"- Method: {cfg.method}; loss: {cfg.loss}; epochs: {cfg.epochs}; batch size: {cfg.batch_size}; "
        f"lr: {cfg.lr}; n_ctx: {cfg.n_ctx}; seed: {cfg.seed}",
        f"- Classes ({len(job.classes)}): {', '.join(job.classes[:50])}{' ...' if len(job.classes) > 50 else ''}",
        "",
        "## Metrics",
        "",
        "```json",
        json.dumps(shown, indent=2, sort_keys=True),
        "```",
        "",
        *quality_lines(metrics.get("quality")),
        "## Intended use",
        "",
        "Disambiguating candidate tag sets of images like the ones it was tuned on (weakly supervised "
        "partial-label learning with prompt alignment, arXiv 2407.07638), and tagging new images of the same "
        "classes. Labels come with a confidence and a margin over the runner-up candidate; items with a small "
        "margin are flagged for review. It was trained without ground truth, so audit a sample before relying "
        "on it, and do not use it for decisions about people.",
        "",
        caveat,
        "",
        "Files: `tower.onnx`, the backbone's image tower, shared by every model of that backbone (input `image`: "
        "float32 (B, 3, S, S) preprocessed as in `preprocess.json`; output `features`: (B, D), unit length; "
        "`tower.json` says what it is), and this model's head `head.npz` (`class_features` (K, D), `bias` (K,), "
        "`logit_scale`): `logits = features @ (logit_scale * class_features).T + bias`, (B, K) in the order of "
        "`classes.json`. The export with `?merged=true` has both in one `model.onnx` (input `image`, output "
        "`logits`).",
        "",
    ]
    return "\n".join(lines)
