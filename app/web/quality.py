"""The quality panel of the job page, the dataset page and the review page: the report read for people
(:mod:`app.services.quality_view`) with its charts (:mod:`app.web.charts`), for ``_quality.html``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup

from app.services.audits import DEFAULT_MIN
from app.services.quality_view import QualityView, event_text, headline, pct, quality_view
from app.web import charts


@dataclass
class QualityPanel:
    view: QualityView
    headline: str
    tags: Markup | None  # estimated accuracy per tag, as bars
    losses: Markup | None  # the epoch curves: losses
    rates: Markup | None  # the epoch curves: label churn and held-out accuracy
    reviews: Markup | None  # the estimate against the reviews so far


def _tag_note(items: int | None, audited: int | None) -> str:
    parts = [f"{items} items" if items is not None else "", f"{audited} audited" if audited else ""]
    return " · ".join(p for p in parts if p)


def quality_panel(
    report: Mapping | None, *, series: Sequence[Mapping] = (), audit_size: int = DEFAULT_MIN
) -> QualityPanel | None:
    """The panel for ``report`` (either shape; None without one) and, when given, the estimate's ``series`` against
    the number of reviews (``[{reviews, accuracy, lo, hi}]``)."""
    view = quality_view(report, audit_size=audit_size)
    if view is None:
        return None
    tags = losses = rates = None
    if view.per_tag:
        rows = [(t.tag, t.accuracy, _tag_note(t.items, t.audited)) for t in view.per_tag]
        tags = Markup(charts.bar_chart(rows, title="Estimated accuracy per tag, the weakest first"))
    epochs = view.epochs
    if any(e["pll_loss"] is not None or e["align_loss"] is not None for e in epochs):
        series_loss = {
            "partial-label loss": [(e["epoch"], e["pll_loss"]) for e in epochs],
            "alignment loss": [(e["epoch"], e["align_loss"]) for e in epochs],
        }
        losses = Markup(charts.line_chart(series_loss, title="Training loss by epoch", x_label="epoch", y_label="loss"))
    if any(e["label_churn"] is not None or e["holdout_acc"] is not None for e in epochs):
        series_rate = {
            "label churn": [(e["epoch"], e["label_churn"]) for e in epochs],
            "held-out accuracy": [(e["epoch"], e["holdout_acc"]) for e in epochs],
        }
        rates = Markup(
            charts.line_chart(
                series_rate,
                title="Label churn and held-out accuracy by epoch",
                x_label="epoch",
                y_label="share",
                unit=True,
            )
        )
    reviews = Markup(charts.reviews_chart(series)) if series else None
    return QualityPanel(view, headline(view), tags, losses, rates, reviews)


__all__ = ["QualityPanel", "event_text", "pct", "quality_panel"]
