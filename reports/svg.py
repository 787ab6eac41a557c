"""A small inline-SVG toolkit: an element builder that escapes every attribute and text node, axis scales with
readable ticks, and the chart frame (grid, ticks, axis titles, legend) shared by every plot in the report.

Escaping lives in one place (`Svg.add`/`Svg.open`) so no plot can forget it: model-derived strings (operator and
input names) reach SVG text and tooltips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

# one palette for the whole report; the CSS in report.css uses the same values
INK = "#0f172a"
MUTED = "#64748b"
GRID = "#e2e8f0"
AXIS = "#94a3b8"
SLO = "#dc2626"
MEETS = "#15803d"
BORDERLINE = "#b45309"
MISSES = "#b91c1c"
PARETO = "#16a34a"
SERIES = ("#2563eb", "#7c3aed", "#ea580c", "#0891b2", "#db2777", "#65a30d", "#475569")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


def esc(value) -> str:
    return escape(str(value), quote=True)


def _attr_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"
    return esc(value)


def _attrs(attrs: dict) -> str:
    # python-friendly names: class_ -> class, stroke_width -> stroke-width; None drops the attribute
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{_attr_value(v)}"' for k, v in attrs.items()
                   if v is not None)


class Svg:
    """Builds one <svg> element; `markup()` returns it as safe markup for the template."""

    def __init__(self, width: float, height: float, label: str, css_class: str = "plot"):
        self.width, self.height = width, height
        opening = (f'<svg class="{esc(css_class)}" viewBox="0 0 {width:g} {height:g}" role="img" '
                   f'aria-label="{esc(label)}" font-family="{esc(FONT)}">')
        self._parts = [opening, f"<title>{esc(label)}</title>"]

    def add(self, tag: str, text: object | None = None, **attrs) -> None:
        if text is None:
            self._parts.append(f"<{tag}{_attrs(attrs)}/>")
        else:
            self._parts.append(f"<{tag}{_attrs(attrs)}>{esc(text)}</{tag}>")

    def open(self, tag: str, tooltip: str | None = None, **attrs) -> None:
        """Opens a group-like element; `tooltip` becomes its <title> (a native hover tooltip, no JS needed)."""
        self._parts.append(f"<{tag}{_attrs(attrs)}>")
        if tooltip:
            self._parts.append(f"<title>{esc(tooltip)}</title>")

    def close(self, tag: str = "g") -> None:
        self._parts.append(f"</{tag}>")

    def text(self, x: float, y: float, text: object, *, size: float = 12, anchor: str = "start",
             fill: str = INK, weight: str | None = None, **attrs) -> None:
        self.add("text", text, x=x, y=y, font_size=size, text_anchor=anchor, fill=fill, font_weight=weight,
                 **attrs)

    def line(self, x1: float, y1: float, x2: float, y2: float, stroke: str, width: float = 1, **attrs) -> None:
        self.add("line", x1=x1, y1=y1, x2=x2, y2=y2, stroke=stroke, stroke_width=width, **attrs)

    def polyline(self, points: Iterable[tuple[float, float]], stroke: str, width: float = 1.5, **attrs) -> None:
        self.add("polyline", points=" ".join(f"{x:.1f},{y:.1f}" for x, y in points), fill="none", stroke=stroke,
                 stroke_width=width, stroke_linejoin="round", **attrs)

    def markup(self) -> Markup:
        # every piece was escaped as it was added, so the whole is safe to insert into the page
        return Markup("".join(self._parts) + "</svg>")


# ---- scales -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """Maps a data interval [lo, hi] onto pixels [px_lo, px_hi], linearly or logarithmically."""

    lo: float
    hi: float
    px_lo: float
    px_hi: float
    log: bool = False

    def __call__(self, value: float) -> float:
        if self.log:
            value = max(value, self.lo * 1e-3)
            position = (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            position = (value - self.lo) / (self.hi - self.lo)
        return self.px_lo + position * (self.px_hi - self.px_lo)

    def clamp(self, value: float) -> float:
        lo, hi = sorted((self.px_lo, self.px_hi))
        return min(max(self(value), lo), hi)

    def ticks(self) -> list[float]:
        return _log_ticks(self.lo, self.hi) if self.log else _linear_ticks(self.lo, self.hi)[0]


def _nice_step(span: float, count: int) -> float:
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def _linear_ticks(lo: float, hi: float, count: int = 6) -> tuple[list[float], float]:
    step = _nice_step(hi - lo, count)
    first = math.ceil(lo / step - 1e-9) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks, step


def _log_ticks(lo: float, hi: float) -> list[float]:
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        ticks = [float(f"{m * 10 ** e:.12g}") for e in decades for m in mantissas
                 if lo * (1 - 1e-9) <= m * 10 ** e <= hi * (1 + 1e-9)]
        if len(ticks) <= 9:
            return ticks
    return ticks[:: math.ceil(len(ticks) / 8)]


def _log_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Widens [lo, hi] to the nearest 1-2-5 values so the plot starts and ends on a labelled tick."""
    steps = [float(f"{m * 10 ** e:.12g}") for e in range(math.floor(math.log10(lo)) - 1,
                                                        math.ceil(math.log10(hi)) + 2) for m in (1, 2, 5)]
    return max(s for s in steps if s <= lo * (1 + 1e-9)), min(s for s in steps if s >= hi * (1 - 1e-9))


def auto_scale(values: Iterable[float], px_lo: float, px_hi: float, *, log: bool | None = None,
               zero: bool = False, wide: float = 20.0, pad: float = 0.04) -> Scale:
    """A scale covering `values`: logarithmic when asked, or (log=None) when they span more than `wide`×;
    linear scales are padded and rounded out to a tick, and start at zero when `zero`."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if not positive:
        return Scale(0.0, 1.0, px_lo, px_hi)
    lo, hi = min(positive), max(positive)
    if log is None:
        log = hi / lo > wide and len(finite) == len(positive)
    if log:
        if hi / lo < 1.0001:
            lo, hi = lo / 2, hi * 2
        lo, hi = _log_bounds(lo, hi)
        return Scale(lo, hi, px_lo, px_hi, log=True)
    lo = 0.0 if zero else min(finite)
    if hi - lo < 1e-12:
        lo, hi = (lo - 1, hi + 1) if lo == 0 else (lo * 0.9, hi * 1.1)
    span = hi - lo
    lo = lo if zero else lo - span * pad
    hi = hi + span * pad
    _, step = _linear_ticks(lo, hi)
    lo = 0.0 if zero or (min(finite) >= 0 > lo) else math.floor(lo / step) * step
    return Scale(lo, math.ceil(hi / step - 1e-9) * step, px_lo, px_hi)


def tick_label(value: float) -> str:
    """Short tick text: 0.05, 0.5, 2, 20, 1,000, 10k."""
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    if abs(value) >= 1:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
    return f"{value:.3g}"


# ---- chart frame --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """The plot area inside an SVG, in pixels."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def axes(svg: Svg, frame: Frame, x: Scale, y: Scale, *, x_title: str, y_title: str,
         x_fmt: Callable[[float], str] = tick_label, y_fmt: Callable[[float], str] = tick_label,
         x_ticks: Sequence[float] | None = None) -> None:
    """Background, gridlines at every tick, tick labels, axis lines and axis titles (with units); `x_ticks`
    replaces the scale's own ticks (e.g. the batch sizes that were measured)."""
    svg.add("rect", x=frame.left, y=frame.top, width=frame.width, height=frame.height, fill="#ffffff")
    for tick in x.ticks() if x_ticks is None else x_ticks:
        px = x(tick)
        svg.line(px, frame.top, px, frame.bottom, GRID)
        svg.text(px, frame.bottom + 17, x_fmt(tick), size=11, anchor="middle", fill=MUTED)
    for tick in y.ticks():
        py = y(tick)
        svg.line(frame.left, py, frame.right, py, GRID)
        svg.text(frame.left - 8, py + 4, y_fmt(tick), size=11, anchor="end", fill=MUTED)
    svg.line(frame.left, frame.bottom, frame.right, frame.bottom, AXIS)
    svg.line(frame.left, frame.top, frame.left, frame.bottom, AXIS)
    svg.text((frame.left + frame.right) / 2, frame.bottom + 38, x_title, size=12.5, anchor="middle", fill=INK)
    middle = (frame.top + frame.bottom) / 2
    svg.text(16, middle, y_title, size=12.5, anchor="middle", fill=INK, transform=f"rotate(-90 16 {middle:.1f})")


@dataclass(frozen=True)
class LegendItem:
    label: str
    kind: str  # "dot" (filled), "ring" (hollow), "line", "dash", "box", "square", "triangle"
    color: str


def legend(svg: Svg, x: float, y: float, items: Iterable[LegendItem], max_x: float | None = None) -> float:
    """One row of legend entries starting at (x, y), wrapping before `max_x`; returns the y below the legend."""
    start, cursor, row_y = x, x, y
    for item in items:
        width = 26 + 6.6 * len(item.label) + 18
        if max_x is not None and cursor + width > max_x and cursor > start:
            cursor, row_y = start, row_y + 20
        cy = row_y - 4
        if item.kind == "dot":
            svg.add("circle", cx=cursor + 8, cy=cy, r=5, fill=item.color)
        elif item.kind == "ring":
            svg.add("circle", cx=cursor + 8, cy=cy, r=4.5, fill="#ffffff", stroke=item.color, stroke_width=2)
        elif item.kind == "square":
            svg.add("rect", x=cursor + 3, y=cy - 5, width=10, height=10, fill=item.color, rx=2)
        elif item.kind == "triangle":
            svg.add("path", d=f"M{cursor + 8:.1f},{cy + 4:.1f} l5,-8 h-10 z", fill=item.color)
        elif item.kind == "box":
            svg.add("rect", x=cursor + 1, y=cy - 5, width=14, height=10, fill=item.color, fill_opacity=0.25,
                    stroke=item.color)
        else:
            svg.line(cursor, cy, cursor + 18, cy, item.color, 2,
                     stroke_dasharray="5 3" if item.kind == "dash" else None)
        svg.text(cursor + 24, row_y, item.label, size=12, fill=INK)
        cursor += width
    return row_y + 12
