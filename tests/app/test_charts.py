"""The quality page's pieces without a server: the SVG charts are valid SVG with one bar per tag and one point per
value, names are escaped, and both report shapes read as words (never a dict)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from app.services.quality_view import headline, quality_view
from app.web import charts
from app.web.quality import event_text, quality_panel
from tests.app.quality_reports import LEGACY, V2

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg" and root.get("role") == "img" and root.find(f"{SVG}title").text
    return root


def _all(root: ET.Element, tag: str, cls: str | None = None) -> list[ET.Element]:
    found = root.iter(f"{SVG}{tag}")
    return [e for e in found if cls is None or cls in (e.get("class") or "").split()]


def test_bar_chart_has_one_bar_per_row_scaled_to_its_value() -> None:
    rows = [("cat", 0.5, "10 items"), ("dog", 1.0, ""), ("<script>x</script>", 0.25, "a & b"), ("neg", -0.2, "")]
    root = _parse(charts.bar_chart(rows, title="per tag"))
    bars = _all(root, "rect", "bar")
    tracks = _all(root, "rect", "track")
    assert len(bars) == len(tracks) == 4
    widths = [float(b.get("width")) for b in bars]
    full = float(tracks[0].get("width"))
    assert widths == [full * 0.5, full, full * 0.25, 0.0]
    texts = [t.text for t in _all(root, "text")]
    assert (
        "<script>x</script>" in " ".join(t for t in texts if t) and "50.0 % · 10 items" in texts and "100.0 %" in texts
    )
    assert "<script>" not in charts.bar_chart(rows, title="per tag")  # escaped in the markup


def test_line_chart_has_a_point_per_value_and_leaves_gaps_out() -> None:
    series = {"loss": [(1, 2.0), (2, 1.5), (3, 1.2)], "churn": [(1, None), (2, 0.3), (3, 0.1)], "empty": [(1, None)]}
    root = _parse(charts.line_chart(series, title="t", x_label="epoch", y_label="loss"))
    assert len(_all(root, "polyline")) == 2  # a series without values draws nothing
    assert len(_all(root, "circle", "point")) == 5
    points = [p.get("points").split() for p in _all(root, "polyline")]
    assert [len(p) for p in points] == [3, 2]
    ys = [float(xy.split(",")[1]) for xy in points[0]]
    assert ys == sorted(ys)  # a falling loss goes down the chart (SVG y grows downwards)


def test_unit_line_chart_is_on_a_fixed_percent_axis() -> None:
    root = _parse(charts.line_chart({"acc": [(1, 0.0), (2, 1.0)]}, title="t", x_label="e", y_label="a", unit=True))
    ticks = [t.text for t in _all(root, "text", "tick")]
    assert "0 %" in ticks and "100 %" in ticks


def test_reviews_chart_draws_the_estimate_and_its_band() -> None:
    points = [
        {"reviews": 0, "accuracy": 0.7, "lo": 0.6, "hi": 0.8},
        {"reviews": 30, "accuracy": 0.78, "lo": 0.7, "hi": 0.85},
        {"reviews": 10, "accuracy": 0.75, "lo": 0.66, "hi": 0.83},
    ]
    root = _parse(charts.reviews_chart(points))
    assert len(_all(root, "circle", "point")) == 3
    (band,) = _all(root, "polygon", "band")
    assert len(band.get("points").split()) == 6
    xs = [float(c.get("cx")) for c in _all(root, "circle", "point")]
    assert xs == sorted(xs)  # in the order of the reviews
    empty = _parse(charts.reviews_chart([]))
    assert _all(empty, "circle") == [] and "no estimate yet" in [t.text for t in _all(empty, "text")]


def test_version_2_report_reads_as_words_and_charts() -> None:
    panel = quality_panel(V2, series=[{"reviews": 5, "accuracy": 0.8, "lo": 0.7, "hi": 0.9}])
    view = panel.view
    assert (view.accuracy, view.lo, view.hi, view.basis) == (0.8125, 0.7012, 0.8903, "audit")
    assert panel.headline == (
        "81.2 % of the labels right (95% interval 70.1 % to 89.0 %): measured on 64 audited items "
        "(a random sample a person tagged without seeing the model's tag)."
    )
    assert [t.tag for t in view.per_tag] == ["lynx", "cat", "dog", "owl"]  # the weakest first
    assert len(_all(_parse(str(panel.tags)), "rect", "bar")) == 4
    assert len(_all(_parse(str(panel.losses)), "circle", "point")) == 6
    assert len(_all(_parse(str(panel.rates)), "circle", "point")) == 4
    assert len(_all(_parse(str(panel.reviews)), "circle", "point")) == 1
    assert [(c.a, c.b, c.items) for c in view.confusions] == [("cat", "lynx", 31), ("dog", "cat", 12)]
    assert view.next_step == V2["next_step"]


def test_legacy_report_reads_as_words_and_says_it_is_not_measured() -> None:
    panel = quality_panel(LEGACY, audit_size=50)
    view = panel.view
    assert view.accuracy == 0.853 and view.lo is None and not view.measured
    assert "not yet measured" in panel.headline
    assert view.next_step == "Audit 50 items (Review, then Audit) to turn this estimate into a measurement."
    assert panel.tags is None and panel.reviews is None  # no per-tag figure in that shape; no series given
    assert len(_all(_parse(str(panel.losses)), "circle", "point")) == 4
    words = " ".join([panel.headline, *view.details, *view.warnings, view.next_step])
    assert "{" not in words and "candidate likelihood" in words


def test_consistency_estimate_without_audit_says_so() -> None:
    report = {**V2, "estimate": {**V2["estimate"], "basis": "consistency", "audited_items": 0}, "next_step": ""}
    view = quality_view(report, audit_size=60)
    assert "estimated from candidate-set consistency: not yet measured" in headline(view)
    assert view.next_step.startswith("Audit 60 items")
    assert quality_view(None) is None and quality_view({}) is None
    assert quality_view({"estimate": "nonsense", "per_tag": [1, {"tag": 3}], "epochs": "x"}).accuracy is None


def test_event_text_is_words_not_json() -> None:
    assert event_text({"stage": "training"}) == "stage training"
    text = event_text({"epoch": 2, "pll_loss": 0.431234, "ok": True, "parts": [1, 2], "x": {"a_b": 1}})
    assert text == "epoch 2 · pll loss 0.4312 · ok yes · parts 1, 2 · x a b 1"
