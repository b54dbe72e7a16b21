"""``svg_chart``: a job's training curves as one inline SVG, drawn here (no chart library, no JS).

Losses share the left axis; a series with ``axis="right"`` (the learning rate, orders of
magnitude smaller) gets its own right axis. The SVG scales to its container through ``viewBox``,
carries a ``<title>``/``<desc>`` for screen readers, and uses presentation attributes only, so a
strict Content-Security-Policy (no inline styles) does not blank it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal

from tunery.store.models import JobMetric

Scale = Callable[[float], float]
MAX_POINTS = 500  # per series; longer runs are thinned evenly, keeping both ends


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]
    color: str
    axis: Literal["left", "right"] = "left"
    markers: bool = False  # dots at each point (sparse series such as eval loss)
    dashed: bool = False


@dataclass(frozen=True)
class _Box:
    left: float
    top: float
    right: float
    bottom: float


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 × 10^k apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    i = 0
    while True:
        t = first + i * step
        ticks.append(round(t, 12))
        if t >= hi - step * 1e-9:
            return ticks
        i += 1


def fmt(v: float) -> str:
    """Short tick / summary label: 3 significant digits, no trailing noise."""
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.3g}"


def _thin(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    pts = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if len(pts) <= MAX_POINTS:
        return pts
    stride = (len(pts) - 1) / (MAX_POINTS - 1)
    return [pts[round(i * stride)] for i in range(MAX_POINTS)]


def _describe(series: Sequence[tuple[Series, list[tuple[float, float]]]]) -> str:
    parts = []
    for s, pts in series:
        if pts:
            (x0, y0), (x1, y1) = pts[0], pts[-1]
            parts.append(f"{s.label} from {fmt(y0)} at step {fmt(x0)} to {fmt(y1)} at step {fmt(x1)}")
    return "; ".join(parts) + "."


def svg_chart(series: Sequence[Series], *, width: int = 640, height: int = 300,
              title: str = "Training curves") -> str:
    """The SVG markup (a string, safe to embed in HTML) plotting ``series`` against step."""
    data = [(s, _thin(s.points)) for s in series]
    all_pts = [p for _, pts in data for p in pts]
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
            f'role="img" aria-labelledby="chart-title chart-desc">'
            f'<title id="chart-title">{escape(title)}</title>')
    if not all_pts:
        return (head + '<desc id="chart-desc">No metrics recorded yet.</desc>'
                f'<text x="{width / 2:g}" y="{height / 2:g}" text-anchor="middle" fill="#666" '
                'font-size="14">No metrics yet</text></svg>')
    has_right = any(s.axis == "right" and pts for s, pts in data)
    box = _Box(left=56, top=34, right=width - (64 if has_right else 16), bottom=height - 36)
    xs = [x for x, _ in all_pts]
    xt = nice_ticks(min(xs), max(xs), 6)
    out = [head, f'<desc id="chart-desc">{escape(_describe(data))}</desc>']
    x_of = _scale(xt[0], xt[-1], box.left, box.right)
    axes: dict[str, tuple[list[float], Scale]] = {}
    for side in ("left", "right"):
        ys = [y for s, pts in data if s.axis == side for _, y in pts]
        if ys:
            yt = nice_ticks(min(ys), max(ys), 5)
            axes[side] = (yt, _scale(yt[0], yt[-1], box.bottom, box.top))
    out.append(_grid_and_axes(box, xt, x_of, axes))
    for s, pts in data:
        if not pts:
            continue
        y_of = axes[s.axis][1]
        coords = [(x_of(x), y_of(y)) for x, y in pts]
        out.append(_draw(s, coords))
    out.append(_legend(box, [s for s, pts in data if pts]))
    out.append("</svg>")
    return "".join(out)


def _scale(lo: float, hi: float, a: float, b: float) -> Scale:
    """Map ``[lo, hi]`` linearly onto ``[a, b]`` (pixels; b < a for a y axis)."""
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _grid_and_axes(box: _Box, xt: list[float], x_of: Scale, axes: dict[str, tuple[list[float], Scale]]) -> str:
    g = ['<g font-size="11" fill="#555">']
    for t in xt:
        x = x_of(t)
        g.append(f'<line x1="{x:.1f}" y1="{box.top}" x2="{x:.1f}" y2="{box.bottom}" stroke="#e3e3e3"/>'
                 f'<text x="{x:.1f}" y="{box.bottom + 15}" text-anchor="middle">{fmt(t)}</text>')
    g.append(f'<text x="{(box.left + box.right) / 2:.1f}" y="{box.bottom + 30}" text-anchor="middle">step</text>')
    if "left" in axes:
        yt, y_of = axes["left"]
        for t in yt:
            y = y_of(t)
            g.append(f'<line x1="{box.left}" y1="{y:.1f}" x2="{box.right}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                     f'<text x="{box.left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    if "right" in axes:
        yt, y_of = axes["right"]
        for t in yt:
            g.append(f'<text x="{box.right + 6}" y="{y_of(t) + 4:.1f}" text-anchor="start">{fmt(t)}</text>')
    g.append(f'<rect x="{box.left}" y="{box.top}" width="{box.right - box.left}" height="{box.bottom - box.top}" '
             'fill="none" stroke="#999"/></g>')
    return "".join(g)


def _draw(s: Series, coords: list[tuple[float, float]]) -> str:
    dash = ' stroke-dasharray="6 4"' if s.dashed else ""
    parts = [f'<g class="series" data-label="{escape(s.label)}">']
    if len(coords) > 1:
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>')
    if s.markers or len(coords) == 1:
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{s.color}"/>' for x, y in coords)
    parts.append("</g>")
    return "".join(parts)


def _legend(box: _Box, series: list[Series]) -> str:
    g = ['<g font-size="12" fill="#222">']
    x = box.left
    for s in series:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        label = s.label + (" (right axis)" if s.axis == "right" else "")
        g.append(f'<line x1="{x}" y1="14" x2="{x + 22}" y2="14" stroke="{s.color}" stroke-width="3"{dash}/>'
                 f'<text x="{x + 28}" y="18">{escape(label)}</text>')
        x += 40 + 7 * len(label)
    g.append("</g>")
    return "".join(g)


def job_series(metrics: Sequence[JobMetric]) -> list[Series]:
    """Train loss, eval loss and learning rate from a job's metric rows (ordered by step), and the
    train and eval reward of reinforcement jobs (series without points are left out of the drawing)."""
    def pick(key: str) -> list[tuple[float, float]]:
        return [(m.step, float(m.values[key])) for m in metrics
                if isinstance(m.values.get(key), int | float)]

    return [
        Series("train loss", pick("train/loss"), color="#1f6fb2"),
        Series("eval loss", pick("eval/loss"), color="#c2410c", markers=True),
        Series("learning rate", pick("train/learning_rate"), color="#6b7280", axis="right", dashed=True),
        Series("train reward", pick("train/reward"), color="#15803d"),
        Series("eval reward", pick("eval/reward"), color="#7c3aed", markers=True),
    ]
