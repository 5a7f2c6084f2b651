"""Charts of the quality report as inline SVG, rendered on the server in pure Python (no script, nothing fetched).

Each function returns one ``<svg>`` element as a string (with ``role="img"``, a ``<title>`` and the values as text
where they fit), every name escaped, ready for a template's ``|safe``. Colours come from ``app.css`` classes:
``bar``, ``line-0``..``line-2`` (a series each), ``band`` (an interval), ``axis``, ``tick``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

#: Width of every chart, in SVG units (the CSS scales it to its box).
WIDTH = 560
_FONT = 12


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"


def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def _svg(height: float, title: str, body: list[str], css: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" viewBox="0 0 {WIDTH} {_num(height)}" '
        f'width="{WIDTH}" height="{_num(height)}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", css: str = "tick") -> str:
    return f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" class="{css}">{escape(text)}</text>'


def _short(text: str, limit: int = 22) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bar_chart(rows: Sequence[tuple[str, float, str]], *, title: str) -> str:
    """Horizontal bars, one per row (label, value in [0, 1], note shown after the value): e.g. the estimated
    accuracy per tag. Values outside [0, 1] are clipped for the bar (the text says the value)."""
    label_w, value_w, row_h, top = 170, 190, 22, 6
    bar_w = WIDTH - label_w - value_w
    body = []
    for k, (label, value, note) in enumerate(rows):
        y = top + k * row_h
        v = min(max(float(value), 0.0), 1.0)
        body.append(_text(label_w - 8, y + 15, _short(str(label)), "end", "label"))
        body.append(f'<rect class="track" x="{label_w}" y="{_num(y + 3)}" width="{bar_w}" height="{row_h - 6}"/>')
        body.append(
            f'<rect class="bar" x="{label_w}" y="{_num(y + 3)}" width="{_num(bar_w * v)}" height="{row_h - 6}">'
            f"<title>{escape(str(label))}: {_pct(float(value))}</title></rect>"
        )
        body.append(
            _text(
                label_w + bar_w + 8,
                y + 15,
                f"{_pct(float(value))} · {note}" if note else _pct(float(value)),
                "start",
                "value",
            )
        )
    return _svg(top * 2 + row_h * max(len(rows), 1), title, body, "bars")


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    step = (hi - lo) / n
    return [lo + step * k for k in range(n + 1)]


def _bounds(values: list[float], unit: bool) -> tuple[float, float]:
    if unit:
        return 0.0, 1.0
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.08
    return (0.0 if lo >= 0 and lo - pad < 0 else lo - pad), hi + pad


class _Frame:
    """The plot area of a line chart and its scales."""

    left, right, top, bottom = 56, 16, 26, 56
    height = 240

    def __init__(self, xs: list[float], ys: list[float], unit: bool):
        self.x0, self.x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if self.x1 <= self.x0:
            self.x0, self.x1 = self.x0 - 1, self.x1 + 1
        self.y0, self.y1 = _bounds(ys, unit)
        self.unit = unit

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (WIDTH - self.left - self.right)

    def y(self, v: float) -> float:
        return self.top + (1 - (v - self.y0) / (self.y1 - self.y0)) * (self.height - self.top - self.bottom)

    def axes(self, x_label: str, y_label: str, integer_x: bool) -> list[str]:
        base = self.height - self.bottom
        out = [
            f'<line class="axis" x1="{self.left}" y1="{_num(base)}" x2="{WIDTH - self.right}" y2="{_num(base)}"/>',
            f'<line class="axis" x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{_num(base)}"/>',
        ]
        for v in _ticks(self.y0, self.y1):
            shown = f"{v * 100:.0f} %" if self.unit else f"{v:.3g}"
            out.append(_text(self.left - 6, self.y(v) + 4, shown, "end"))
        xt = sorted({round(v) for v in _ticks(self.x0, self.x1)}) if integer_x else _ticks(self.x0, self.x1)
        for v in xt:
            out.append(_text(self.x(v), base + 16, f"{v:g}", "middle"))
        out.append(_text((self.left + WIDTH - self.right) / 2, base + 32, x_label, "middle", "label"))
        out.append(_text(4, 12, y_label, "start", "label"))
        return out


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    unit: bool = False,
) -> str:
    """One polyline per series ({name: [(x, y or None)]}, None leaves the point out) with a circle per point and a
    legend; ``unit``: y is a share in [0, 1], shown in percent on a fixed 0-100 % axis."""
    kept = {name: [(float(x), float(y)) for x, y in pts if y is not None] for name, pts in series.items()}
    kept = {name: pts for name, pts in kept.items() if pts}
    xs = [float(x) for pts in series.values() for x, _ in pts]  # every series on the same x range, gaps included
    frame = _Frame(xs, [y for pts in kept.values() for _, y in pts], unit)
    body = frame.axes(x_label, y_label, integer_x=True)
    for k, (name, pts) in enumerate(kept.items()):
        css = f"line-{k % 3}"
        coords = " ".join(f"{_num(frame.x(x))},{_num(frame.y(y))}" for x, y in pts)
        body.append(f'<polyline class="{css}" fill="none" points="{coords}"/>')
        for x, y in pts:
            shown = _pct(y) if unit else f"{y:.4g}"
            body.append(
                f'<circle class="{css} point" cx="{_num(frame.x(x))}" cy="{_num(frame.y(y))}" r="3">'
                f"<title>{escape(name)}, {x:g}: {shown}</title></circle>"
            )
        lx = frame.left + 10 + k * 150
        body.append(f'<rect class="{css} key" x="{lx}" y="{frame.height - 6}" width="10" height="4"/>')
        body.append(_text(lx + 14, frame.height, _short(name), "start", "legend"))
    if not kept:
        body.append(_text(WIDTH / 2, frame.height / 2, "no values", "middle", "label"))
    return _svg(frame.height + 12, title, body, "lines")


def reviews_chart(points: Sequence[Mapping], *, title: str = "Estimated accuracy against reviews so far") -> str:
    """The estimate against the number of reviews: one point per estimate ({reviews, accuracy, lo, hi}, e.g.
    ``app.services.refits.quality_series``), its 95% interval as a band, in percent."""
    pts = sorted(
        (
            float(p["reviews"]),
            float(p["accuracy"]),
            float(p.get("lo", p["accuracy"])),
            float(p.get("hi", p["accuracy"])),
        )
        for p in points
        if p.get("accuracy") is not None
    )
    frame = _Frame([p[0] for p in pts], [], unit=True)
    body = frame.axes("reviews so far", "accuracy", integer_x=True)
    if pts:
        upper = [f"{_num(frame.x(x))},{_num(frame.y(hi))}" for x, _, _, hi in pts]
        lower = [f"{_num(frame.x(x))},{_num(frame.y(lo))}" for x, _, lo, _ in reversed(pts)]
        body.append(f'<polygon class="band" points="{" ".join(upper + lower)}"/>')
        coords = " ".join(f"{_num(frame.x(x))},{_num(frame.y(a))}" for x, a, _, _ in pts)
        body.append(f'<polyline class="line-0" fill="none" points="{coords}"/>')
        for x, a, lo, hi in pts:
            body.append(
                f'<circle class="line-0 point" cx="{_num(frame.x(x))}" cy="{_num(frame.y(a))}" r="3">'
                f"<title>{x:g} reviews: {_pct(a)} (95% interval {_pct(lo)} to {_pct(hi)})</title></circle>"
            )
    else:
        body.append(_text(WIDTH / 2, frame.height / 2, "no estimate yet", "middle", "label"))
    return _svg(frame.height + 12, title, body, "lines")
