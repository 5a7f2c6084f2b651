"""The Markdown model card stored next to a job's head and the image tower it runs on."""

from __future__ import annotations

from datetime import UTC, datetime

from app.config import REFERENCE_BACKBONE, get_settings
from app.services.quality_view import pct, quality_view, words


def _cell(value) -> str:
    """A Markdown table cell: the value in words, pipes and line breaks escaped."""
    return words(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows),
        "",
    ]


def quality_lines(quality: dict | None) -> list[str]:
    """The card's "Label quality" section: the job's quality report in words and tables (either report shape)."""
    view = quality_view(quality)
    if view is None:
        return []
    interval = (
        f" (95% interval {pct(view.lo)} to {pct(view.hi)})" if view.lo is not None and view.hi is not None else ""
    )
    lines = [
        "## Label quality",
        "",
        f"- Estimated share of correct labels: **{pct(view.accuracy)}**{interval}: {view.basis_text}.",
        f"- Next: {view.next_step}",
        *(f"- {d}" for d in view.details),
        *(f"- Warning: {w}" for w in view.warnings),
        "",
    ]
    if view.per_tag:
        lines += ["### Estimated accuracy per tag (the weakest first)", ""]
        rows = [[t.tag, pct(t.accuracy), t.items, t.audited] for t in view.per_tag]
        lines += _table(["tag", "estimated accuracy", "items", "audited"], rows)
    if view.confusions:
        lines += ["### Tags the model confuses most within candidate sets", ""]
        rows = [[f"{c.a} and {c.b}", c.items, pct(c.share)] for c in view.confusions]
        lines += _table(["tags", "items", "share"], rows)
    if view.epochs:
        lines += ["### Training by epoch", ""]
        rows = [
            [int(e["epoch"]), e["pll_loss"], e["align_loss"], pct(e["label_churn"]), pct(e["holdout_acc"])]
            for e in view.epochs
        ]
        lines += _table(["epoch", "partial-label loss", "alignment loss", "label churn", "held-out accuracy"], rows)
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
        *_table(["metric", "value"], [[k.replace("_", " "), shown[k]] for k in sorted(shown)]),
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
