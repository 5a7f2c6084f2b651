"""A quality report read for people: the headline figure, what it rests on, per-tag figures, confusions, epoch
curves and what to do next, from either report shape (no dict reaches a page or the model card).

Reads the report of ``ml.quality.assess`` (``"version": 2``, CONTRACTS.md: ``estimate``, ``per_tag``,
``confusions``, ``epochs``, ``next_step``) and the older one jobs stored before it (``estimated_accuracy``,
``holdout``, ``calibration``, ``certain_items``, ``epochs``, ``warnings``). The web app (``app/web/quality.py``) and
the model card (``worker/model_card.py``) render this view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.services.audits import DEFAULT_MIN


@dataclass
class TagFigure:
    tag: str
    accuracy: float
    items: int | None
    audited: int | None


@dataclass
class Confusion:
    a: str
    b: str
    items: int | None
    share: float | None


@dataclass
class QualityView:
    accuracy: float | None
    lo: float | None
    hi: float | None
    basis: str  # "audit" | "consistency" | "holdout" | "confidence" | "none"
    basis_text: str  # what the figure rests on, one sentence
    details: list[str] = field(default_factory=list)  # further facts, one sentence each
    per_tag: list[TagFigure] = field(default_factory=list)
    confusions: list[Confusion] = field(default_factory=list)
    epochs: list[dict[str, float | None]] = field(default_factory=list)  # epoch, pll_loss, align_loss, ...
    warnings: list[str] = field(default_factory=list)
    next_step: str = ""

    @property
    def measured(self) -> bool:
        return self.basis == "audit"


def _f(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _i(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f} %"


def _interval(ci: Any) -> tuple[float | None, float | None]:
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return _f(ci[0]), _f(ci[1])
    return None, None


def _basis_text(basis: str, audited: int | None, certain: int | None) -> str:
    if basis == "audit":
        return (
            f"measured on {audited or 0} audited items (a random sample a person tagged without seeing the model's tag)"
        )
    if basis == "consistency":
        return "estimated from candidate-set consistency: not yet measured"
    if basis == "holdout":
        return "estimated from the model's calibrated confidence, checked on held-out items with a known tag"
    if basis == "confidence":
        return "estimated from the model's own confidence: not yet measured"
    return "not yet measured"


def _epochs(raw: Any) -> list[dict[str, float | None]]:
    rows = []
    for e in raw if isinstance(raw, list) else []:
        if isinstance(e, Mapping) and _i(e.get("epoch")) is not None:
            keys = ("pll_loss", "align_loss", "label_churn", "holdout_acc")
            rows.append({"epoch": float(e["epoch"]), **{k: _f(e.get(k)) for k in keys}})
    return rows


def _per_tag(raw: Any) -> list[TagFigure]:
    out = []
    for row in raw if isinstance(raw, list) else []:
        if (
            isinstance(row, Mapping)
            and isinstance(row.get("tag"), str)
            and _f(row.get("estimated_accuracy")) is not None
        ):
            out.append(
                TagFigure(row["tag"], _f(row["estimated_accuracy"]), _i(row.get("items")), _i(row.get("audited")))
            )
    return sorted(out, key=lambda t: (t.accuracy, t.tag))  # the weakest first


def _confusions(raw: Any) -> list[Confusion]:
    out = []
    for row in raw if isinstance(raw, list) else []:
        tags = row.get("tags") if isinstance(row, Mapping) else None
        if isinstance(tags, list | tuple) and len(tags) == 2:
            out.append(Confusion(str(tags[0]), str(tags[1]), _i(row.get("items")), _f(row.get("share"))))
    return out


def _next_step(view: QualityView, audit_size: int) -> str:
    if view.accuracy is None:
        return "Run a job on this dataset: its labels get a quality estimate."
    if not view.measured:
        return f"Audit {audit_size} items (Review, then Audit) to turn this estimate into a measurement."
    if view.per_tag:
        weakest = view.per_tag[0]
        return f"Review the items tagged {weakest.tag!s} first: its estimate is the lowest ({pct(weakest.accuracy)})."
    return "Review the doubtful items first (the review page lists them by margin)."


def quality_view(report: Mapping | None, *, audit_size: int = DEFAULT_MIN) -> QualityView | None:
    """The report in words and figures; None without a report. ``audit_size``: the audit suggested when the figure
    is not measured (the dataset's default audit size)."""
    if not isinstance(report, Mapping) or not report:
        return None
    estimate = report.get("estimate")
    details: list[str] = []
    if isinstance(estimate, Mapping):  # version 2 (ml.quality.assess)
        accuracy = _f(estimate.get("accuracy"))
        lo, hi = _interval(estimate.get("ci95"))
        basis = str(estimate.get("basis") or "none")
        audited, certain = _i(estimate.get("audited_items")), _i(estimate.get("certain_items"))
        if certain:
            details.append(f"{certain} items have a tag a person gave (right by definition, not a random sample).")
        warning = estimate.get("warning")
        warnings = [str(warning)] if warning else []
    else:  # the report jobs stored before version 2
        accuracy = _f(report.get("estimated_accuracy"))
        lo = hi = None
        holdout = report.get("holdout")
        basis = "holdout" if isinstance(holdout, Mapping) else "confidence"
        audited, certain = None, _i(report.get("certain_items"))
        if isinstance(holdout, Mapping):
            hlo, hhi = _interval(holdout.get("ci95"))
            details.append(
                f"Held-out check: {_i(holdout.get('correct'))} of {_i(holdout.get('items'))} items with a known tag "
                f"labelled right, {pct(_f(holdout.get('accuracy')))} (95% interval {pct(hlo)} to {pct(hhi)})."
            )
        if certain:
            details.append(f"{certain} items have a tag a person gave; every other item counts its confidence.")
        warnings = []
    calibration = report.get("calibration")
    if isinstance(calibration, Mapping) and _f(calibration.get("temperature")) is not None:
        method = str(calibration.get("method", "")).replace("_", " ")
        details.append(
            f"Confidences calibrated by {method or 'temperature'} (temperature {calibration['temperature']:.3g})."
        )
    warnings += [str(w) for w in report.get("warnings") or [] if str(w) not in warnings]
    view = QualityView(
        accuracy=accuracy,
        lo=lo,
        hi=hi,
        basis=basis,
        basis_text=_basis_text(basis, audited, certain),
        details=details,
        per_tag=_per_tag(report.get("per_tag")),
        confusions=_confusions(report.get("confusions")),
        epochs=_epochs(report.get("epochs")),
        warnings=warnings,
    )
    given = report.get("next_step")
    view.next_step = str(given) if isinstance(given, str) and given else _next_step(view, audit_size)
    return view


def headline(view: QualityView) -> str:
    """One line: the figure, its interval and what it rests on."""
    interval = (
        f" (95% interval {pct(view.lo)} to {pct(view.hi)})" if view.lo is not None and view.hi is not None else ""
    )
    return f"{pct(view.accuracy)} of the labels right{interval}: {view.basis_text}."


def words(v: Any) -> str:
    """A value of a report or an event in words: numbers to 4 significant digits, lists and mappings spelled out."""
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "no", None: "–"}[v]
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return ", ".join(words(x) for x in v)
    if isinstance(v, Mapping):
        return ", ".join(f"{str(k).replace('_', ' ')} {words(x)}" for k, x in v.items())
    return str(v)


def event_text(data: Mapping | None) -> str:
    """A job event's data in words ("epoch 2 · epochs 3 · pll loss 0.4312"), never as JSON (app.js mirrors it)."""
    if not isinstance(data, Mapping):
        return ""
    return " · ".join(f"{str(k).replace('_', ' ')} {words(v)}" for k, v in data.items())
