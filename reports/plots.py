"""The report's charts as inline SVG, drawn from plain report data (no matplotlib, no external resources).

Each function returns safe markup: an <svg> built with `reports.svg.Svg` (which escapes every string it is given),
or a short escaped note when there is nothing to draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup

from reports import formatting as fmt
from reports.svg import (AXIS, BORDERLINE, GRID, INK, MEETS, MISSES, MUTED, PARETO, SERIES, SLO, Frame, LegendItem,
                         Scale, Svg, auto_scale, axes, esc, legend, tick_label)

VERDICT_COLORS = {"meets": MEETS, "borderline": BORDERLINE, "misses": MISSES}
CHAR_PX = 0.6  # average glyph width of the UI font, per pixel of font size, for placing labels
HALO = {"stroke": "#ffffff", "stroke_width": 3, "paint_order": "stroke", "stroke_linejoin": "round"}  # over lines


def note(text: str) -> Markup:
    return Markup(f'<p class="empty">{esc(text)}</p>')


def _number(value) -> bool:
    return fmt.is_number(value)


# ---- latency against price ------------------------------------------------------------------------------------


AROUND = ((10, -10, "start"), (10, 18, "start"), (-10, -10, "end"), (-10, 18, "end"), (10, -28, "start"),
          (-10, -28, "end"), (10, 36, "start"), (-10, 36, "end"))


@dataclass
class _Labels:
    """Places text labels next to points so they avoid each other and stay inside the plot."""

    frame: Frame
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    @staticmethod
    def box(x: float, y: float, text: str, size: float, anchor: str) -> tuple[float, float, float, float]:
        width = len(text) * size * CHAR_PX
        left = x if anchor == "start" else x - width if anchor == "end" else x - width / 2
        return left, y - size, left + width, y + 3

    def reserve(self, x: float, y: float, text: str, size: float, anchor: str) -> None:
        self.boxes.append(self.box(x, y, text, size, anchor))

    def place(self, svg: Svg, x: float, y: float, text: str, color: str, size: float = 12.5,
              around=AROUND) -> None:
        for dx, dy, anchor in around:
            box = self.box(x + dx, y + dy, text, size, anchor)
            inside = box[0] >= self.frame.left and box[2] <= self.frame.right and box[1] >= self.frame.top and \
                box[3] <= self.frame.bottom
            if inside and not any(_overlap(box, other) for other in self.boxes):
                break
        else:
            dx, dy, anchor = around[0]
            box = self.box(x + dx, y + dy, text, size, anchor)
        self.boxes.append(box)
        svg.text(x + dx, y + dy, text, size=size, anchor=anchor, fill=color, weight="600", stroke="#ffffff",
                 stroke_width=4, paint_order="stroke", stroke_linejoin="round")


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def latency_vs_price(rows: Sequence[dict], *, slo_ms: float | None, percentile: str, pareto: Sequence[str],
                     colors: dict[str, str], labels: dict[str, str]) -> Markup:
    """Every ranked instance at its best configuration: price per hour against latency at the SLO percentile.

    Measured rows are filled, estimated ones hollow with their interval as a bar; colour is the backend; the
    region above the SLO is shaded; the Pareto frontier is a step line; `labels` names the points to annotate
    (recommended, runner-up, closest miss)."""
    rows = [r for r in rows if _number(r.get("price_per_hour")) and r["price_per_hour"] > 0
            and _number(r.get("latency_ms")) and r["latency_ms"] > 0]
    if not rows:
        return note("No priced instance to plot.")
    width, height = 960, 520
    frame = Frame(84, 64, width - 28, height - 62)
    prices = [r["price_per_hour"] for r in rows]
    latencies = [r["latency_ms"] for r in rows] + [v for r in rows for v in _interval(r) if v > 0]
    if _number(slo_ms) and slo_ms > 0:
        latencies.append(slo_ms)
    latencies.append(max(latencies) * 1.3)  # headroom above the highest point or the SLO line for its label
    x = auto_scale(prices, frame.left, frame.right, pad=0.06)
    y = auto_scale(latencies, frame.bottom, frame.top, pad=0.08, zero=False)
    svg = Svg(width, height, f"{percentile} latency against price per hour for {len(rows)} instances")
    axes(svg, frame, x, y, x_title=f"price per hour (USD{', log scale' if x.log else ''})",
         y_title=f"{percentile} latency (ms{', log scale' if y.log else ''})", x_fmt=lambda v: "$" + tick_label(v))
    placer = _Labels(frame)
    dots = [(x(r["price_per_hour"]), y(r["latency_ms"])) for r in rows]
    if _number(slo_ms) and slo_ms > 0:
        slo_y = y.clamp(slo_ms)
        svg.add("rect", x=frame.left, y=frame.top, width=frame.width, height=max(slo_y - frame.top, 0),
                fill=SLO, fill_opacity=0.05)
        svg.line(frame.left, slo_y, frame.right, slo_y, SLO, 1.6, stroke_dasharray="7 4")
        slo_label = f"SLO: {percentile} ≤ {fmt.number(slo_ms, 4)} ms"
        # the end of the line with no point under the label, so the label never hides a point
        spots = [(frame.right - 6, slo_y - 7, "end"), (frame.left + 8, slo_y - 7, "start"),
                 (frame.right - 6, slo_y + 17, "end"), (frame.left + 8, slo_y + 17, "start")]
        lx, ly, anchor = next((spot for spot in spots if not any(
            _overlap(_Labels.box(*spot[:2], slo_label, 12, spot[2]), (px - 7, py - 7, px + 7, py + 7))
            for px, py in dots)), spots[0])
        svg.text(lx, ly, slo_label, size=12, anchor=anchor, fill=SLO, weight="600", stroke="#ffffff",
                 stroke_width=3, paint_order="stroke")
        placer.reserve(lx, ly, slo_label, 12, anchor)
        if slo_y - frame.top > 26:
            svg.text(frame.left + 8, frame.top + 16, "misses the SLO", size=11, fill=SLO, fill_opacity=0.75)
            placer.reserve(frame.left + 8, frame.top + 16, "misses the SLO", 11, "start")
    placer.boxes += [(px - 5, py - 5, px + 5, py + 5) for px, py in dots]
    frontier = sorted((r for r in rows if r["instance"] in set(pareto)), key=lambda r: r["price_per_hour"])
    if len(frontier) > 1:
        points = [(x(frontier[0]["price_per_hour"]), y(frontier[0]["latency_ms"]))]
        for row in frontier[1:]:
            px, py = x(row["price_per_hour"]), y(row["latency_ms"])
            points += [(px, points[-1][1]), (px, py)]
        svg.polyline(points, PARETO, 2, stroke_opacity=0.75)
    # estimated first, so measured points (the firmer figures) are drawn on top
    for row in sorted(rows, key=lambda r: (r.get("source") == "measured", r["instance"] in labels)):
        _price_point(svg, row, x, y, colors, percentile)
    for row in rows:
        if row["instance"] in labels:
            px, py = x(row["price_per_hour"]), y(row["latency_ms"])
            svg.add("circle", cx=px, cy=py, r=10, fill="none", stroke=INK, stroke_width=1.5)
            placer.place(svg, px, py, labels[row["instance"]], INK)
    backends = list(dict.fromkeys(r.get("backend", "?") for r in rows))
    items = [LegendItem(b, "dot", colors.get(b, SERIES[-1])) for b in backends]
    items += [LegendItem("measured", "dot", MUTED), LegendItem("estimated (bar: 95% interval)", "ring", MUTED),
              LegendItem("Pareto frontier", "line", PARETO)]
    if any(r.get("recommendable") is False for r in rows):
        items.append(LegendItem("faded: not recommendable", "dot", "#cbd5e1"))
    legend(svg, frame.left, 24, items, max_x=frame.right)
    return svg.markup()


def _interval(row: dict) -> tuple[float, float]:
    interval = row.get("latency_ms_interval")
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(_number(v) for v in interval):
        return float(interval[0]), float(interval[1])
    return float(row["latency_ms"]), float(row["latency_ms"])


def _price_point(svg: Svg, row: dict, x: Scale, y: Scale, colors: dict[str, str], percentile: str) -> None:
    color = colors.get(row.get("backend", "?"), SERIES[-1])
    px, py = x(row["price_per_hour"]), y(row["latency_ms"])
    low, high = _interval(row)
    measured = row.get("source") == "measured"
    faded = row.get("recommendable") is False
    tooltip = (f"{row['instance']} ({row.get('provider', '?')} {row.get('region', '')}) · {row.get('backend', '?')} "
               f"· {row.get('source', '?')}\n{percentile} {fmt.ms(row['latency_ms'])} ms "
               f"[{fmt.ms(low)}–{fmt.ms(high)}] · {row.get('slo_verdict', '')}\n"
               f"{fmt.money(row['price_per_hour'])}/h · {fmt.money(row.get('cost_per_million'))} per million")
    svg.open("g", tooltip=tooltip, opacity=0.4 if faded else None)
    if high > low:
        top, bottom = y.clamp(high), y.clamp(low)
        svg.line(px, top, px, bottom, color, 1.4, stroke_opacity=0.55)
        svg.line(px - 3, top, px + 3, top, color, 1.4, stroke_opacity=0.55)
        svg.line(px - 3, bottom, px + 3, bottom, color, 1.4, stroke_opacity=0.55)
    if measured:
        svg.add("circle", cx=px, cy=py, r=6, fill=color, stroke="#ffffff", stroke_width=1.5)
    else:
        svg.add("circle", cx=px, cy=py, r=5, fill="#ffffff", stroke=color, stroke_width=2)
    svg.close()


# ---- the verdict gauge ----------------------------------------------------------------------------------------


def gauge(latency_ms, interval, slo_ms, verdict: str | None) -> Markup:
    """A one-line gauge: the latency and its interval on an axis from 0, against the SLO."""
    if not _number(latency_ms) or not _number(slo_ms) or slo_ms <= 0:
        return Markup("")
    low, high = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(
        _number(v) for v in interval) else (latency_ms, latency_ms)
    width, height = 340, 58
    top = max(slo_ms, high, latency_ms) * 1.12
    scale = Scale(0.0, top, 10, width - 10)
    color = VERDICT_COLORS.get(verdict or "", INK)
    svg = Svg(width, height, f"latency {fmt.ms(latency_ms)} ms against the SLO of {fmt.ms(slo_ms)} ms",
              css_class="gauge")
    svg.add("rect", x=scale(0), y=26, width=scale(slo_ms) - scale(0), height=10, fill=MEETS, fill_opacity=0.14,
            rx=2)
    svg.add("rect", x=scale(slo_ms), y=26, width=scale(top) - scale(slo_ms), height=10, fill=MISSES,
            fill_opacity=0.14, rx=2)
    svg.add("rect", x=scale(low), y=28, width=max(scale(high) - scale(low), 2), height=6, fill=color,
            fill_opacity=0.45, rx=3)
    svg.add("circle", cx=scale(latency_ms), cy=31, r=6.5, fill=color, stroke="#ffffff", stroke_width=2)
    svg.line(scale(slo_ms), 18, scale(slo_ms), 44, SLO, 2)
    label = f"SLO {fmt.number(slo_ms, 4)} ms"
    half = len(label) * 11.5 * CHAR_PX / 2
    at = min(max(scale(slo_ms), 2 + half), width - 2 - half)  # keep the label inside the gauge
    svg.text(at, 13, label, size=11.5, anchor="middle", fill=SLO, weight="600")
    start = scale(low) < width * 0.55
    svg.text(max(scale(low), 10) if start else scale(high), 56, f"{fmt.ms(low)}–{fmt.ms(high)} ms (95% interval)",
             size=10.5, anchor="start" if start else "end", fill=MUTED)
    return svg.markup()


# ---- tuning progress --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgressSeries:
    label: str
    color: str
    points: tuple[tuple[float, float, float | None], ...]  # (trials so far, best ms, elapsed s)


@dataclass(frozen=True)
class ReferenceLine:
    label: str
    value_ms: float
    color: str


def tuning_progress(series: Sequence[ProgressSeries], references: Sequence[ReferenceLine]) -> Markup:
    """The tuner's latency estimate (from the best kernel found so far for each task) against trials used, as a
    step line per tuning run, with reference lines (the untuned build, the other backends' best, the SLO)."""
    series = [s for s in series if s.points]
    if not series:
        return note("No tuning progress was recorded.")
    width, height = 960, 360
    frame = Frame(84, 58, width - 28, height - 58)
    trials = [p[0] for s in series for p in s.points] + [0]
    values = [p[1] for s in series for p in s.points] + [r.value_ms for r in references]
    x = auto_scale(trials, frame.left, frame.right, log=False, zero=True, pad=0.02)
    y = auto_scale(values, frame.bottom, frame.top, pad=0.1)
    svg = Svg(width, height, "Tuning progress: latency estimated from the best kernels found, against trials used")
    axes(svg, frame, x, y, x_title="tuning trials (measured candidates)",
         y_title=f"latency estimate (ms{', log' if y.log else ''})")
    placer = _Labels(frame)
    for ref in references:
        py = y.clamp(ref.value_ms)
        text = f"{ref.label}: {fmt.ms(ref.value_ms)} ms"
        svg.line(frame.left, py, frame.right, py, ref.color, 1.4, stroke_dasharray="6 4")
        svg.text(frame.right - 4, py - 5, text, size=11.5, anchor="end", fill=ref.color, weight="600",
                 stroke="#ffffff", stroke_width=3, paint_order="stroke")
        placer.reserve(frame.right - 4, py - 5, text, 11.5, "end")
    for s in series:
        points = sorted(s.points)
        path: list[tuple[float, float]] = []
        for trials_used, best, _ in points:
            px, py = x(trials_used), y(best)
            if path:
                path.append((px, path[-1][1]))
            path.append((px, py))
        svg.polyline(path, s.color, 2.2)
        for trials_used, best, seconds in points:
            when = f" after {fmt.duration(seconds)}" if _number(seconds) else ""
            svg.open("g", tooltip=f"{s.label}: {fmt.ms(best)} ms after {trials_used:g} trials{when}")
            svg.add("circle", cx=x(trials_used), cy=y(best), r=3.6, fill=s.color, stroke="#ffffff",
                    stroke_width=1.2)
            svg.close()
        last = points[-1]
        placer.place(svg, x(last[0]), y(last[1]), f"{fmt.ms(last[1])} ms", s.color, 12,
                     around=((8, 4, "start"), (0, -10, "middle"), (0, 20, "middle"), (-8, -10, "end"),
                             (-8, 20, "end")))
    items = [LegendItem(s.label, "line", s.color) for s in series]
    legend(svg, frame.left, 24, items, max_x=frame.right)
    return svg.markup()


# ---- latency against batch size ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchFitCurve:
    """One candidate's latency-vs-batch line (`costmodel.batch_fits[]`, at the SLO percentile) and what widens a
    fitted figure's interval: the residual band, the widest measured relative interval and, beyond the largest
    measured size, the extrapolation check (advisor/sizing.py `BatchCurve.estimate`)."""

    fixed_ms: float
    per_item_ms: float
    measured: tuple[int, ...]  # sorted
    max_batch: int
    band: tuple[float, float]
    relative: tuple[float, float]
    extrapolation_ratio: float | None

    def at(self, batch: float) -> float:
        return self.fixed_ms + self.per_item_ms * batch

    def interval(self, batch: float) -> tuple[float, float]:
        low, high = self.band
        if batch > self.measured[-1] and self.extrapolation_ratio is not None:
            low, high = min(low, self.extrapolation_ratio), max(high, self.extrapolation_ratio)
        point = self.at(batch)
        return point * self.relative[0] * low, point * self.relative[1] * high


@dataclass(frozen=True)
class BatchMeasurement:
    batch: int
    latency_ms: float
    interval_ms: tuple[float, float] | None
    phase: str


@dataclass(frozen=True)
class ChosenBatch:
    batch: int
    instance: str
    basis: str  # measured | interpolated | extrapolated


def batch_fit(curve: BatchFitCurve | None, measured: Sequence[BatchMeasurement], *, slo_ms: float | None,
              percentile: str, chosen: ChosenBatch | None, label: str, color: str) -> Markup:
    """Latency at the SLO percentile against batch size for one candidate: the measured points (filled, with their
    intervals), the fitted line (solid between measured sizes, dashed where it is extrapolated, up to the cap),
    the fitted figures' interval as a band, the SLO, and the batch the instance was sized at."""
    if curve is None or not curve.measured:
        return note("No latency-vs-batch fit to plot.")
    width, height = 960, 380
    frame = Frame(84, 64, width - 28, height - 58)
    first, largest, cap = curve.measured[0], curve.measured[-1], max(curve.max_batch, curve.measured[-1])
    x = Scale(0.0, cap * 1.04 + 0.5, frame.left, frame.right)
    firm = [m.latency_ms for m in measured] + [m.interval_ms[1] for m in measured if m.interval_ms] + \
        [curve.at(cap) * 1.1, curve.at(largest) * 1.1]
    top = max(v for v in firm if _number(v))
    # the band may be far wider than the points (a noisy fit): it runs off the top rather than flatten them
    values = firm + [min(curve.interval(cap)[1], top * 1.6)]
    slo_shown = _number(slo_ms) and 0 < slo_ms <= top * 1.6
    if slo_shown:
        values.append(slo_ms)
    y = auto_scale(values, frame.bottom, frame.top, log=False, zero=True, pad=0.06)
    svg = Svg(width, height, f"{percentile} latency against batch size: {label}")
    ticks = sorted({*curve.measured, cap})
    axes(svg, frame, x, y, x_title="batch size (ticks: measured sizes and the fit's cap)",
         y_title=f"{percentile} latency per batch (ms)", x_ticks=ticks)
    # the two ranges a fitted batch can fall in, as ribbons along the top (the band below stays readable)
    ribbons = [(first, largest, "interpolated between measured sizes", "#e2e8f0", MUTED,
                "interpolated: between measured sizes, on the fitted line")]
    if cap > largest:
        ribbons.append((largest, cap, "extrapolated (≤ 2× the largest measured)", "#fde68a", "#92400e",
                        f"extrapolated: batch {largest + 1}–{cap}, beyond the largest measured size (at most 2× "
                        "it); the interval is widened by the extrapolation check"))
    for low, high, text, fill, ink, tooltip in ribbons:
        if high <= low:
            continue
        left, right = x(low), x(high)
        svg.open("g", tooltip=tooltip)
        svg.add("rect", x=left, y=frame.top, width=right - left, height=20, fill=fill, fill_opacity=0.7)
        room = (right - left - 8) / (11 * CHAR_PX)
        shown = text if len(text) <= room else text.split(" ")[0] if len(text.split(" ")[0]) <= room else ""
        if shown:
            svg.text((left + right) / 2, frame.top + 14, shown, size=11, anchor="middle", fill=ink, weight="600")
        svg.close()
    if cap > largest:
        svg.line(x(largest), frame.top, x(largest), frame.bottom, AXIS, 1, stroke_dasharray="3 3")
    steps = 48
    batches = sorted({first + (cap - first) * k / steps for k in range(steps + 1)} | {largest, largest + 1e-6})
    batches = [b for b in batches if first <= b <= cap]
    upper = [(x(b), y.clamp(curve.interval(b)[1])) for b in batches]
    lower = [(x(b), y.clamp(curve.interval(b)[0])) for b in reversed(batches)]
    svg.open("g", tooltip=f"fitted figures' 95% interval: residual band ×{fmt.number(curve.band[0], 3)}–"
                          f"×{fmt.number(curve.band[1], 3)} on the widest measured interval")
    svg.add("polygon", points=" ".join(f"{a:.1f},{b:.1f}" for a, b in upper + lower), fill=color, fill_opacity=0.1)
    svg.close()
    if _number(slo_ms) and slo_ms > 0:
        if slo_shown:
            py = y(slo_ms)
            svg.line(frame.left, py, frame.right, py, SLO, 1.6, stroke_dasharray="7 4")
            svg.text(frame.left + 8, py - 6, f"SLO: {percentile} ≤ {fmt.number(slo_ms, 4)} ms", size=11.5, fill=SLO,
                     weight="600", **HALO)
        else:
            svg.text(frame.right, frame.top - 8, f"SLO {fmt.number(slo_ms, 4)} ms: above the plot ↑", size=11.5,
                     anchor="end", fill=SLO, weight="600")
    line = f"{fmt.ms(curve.fixed_ms)} + {fmt.ms(curve.per_item_ms)} ms × batch"
    svg.open("g", tooltip=f"fitted: {percentile} latency = {line}, measured at {', '.join(map(str, curve.measured))}")
    svg.polyline([(x(first), y.clamp(curve.at(first))), (x(largest), y.clamp(curve.at(largest)))], color, 2.2)
    if cap > largest:
        svg.polyline([(x(largest), y.clamp(curve.at(largest))), (x(cap), y.clamp(curve.at(cap)))], color, 2.2,
                     stroke_dasharray="7 5")
    svg.close()
    svg.text(x(cap) - 4, y.clamp(curve.at(cap)) - 10, line, size=11.5, anchor="end", fill=color, weight="600",
             **HALO)
    if chosen is not None and 0 < chosen.batch <= cap:
        px = x(chosen.batch)
        svg.line(px, frame.top + 20, px, frame.bottom, INK, 1.2, stroke_dasharray="2 3")
        text = f"{chosen.instance}: sized at batch {chosen.batch} ({chosen.basis})"
        anchor = "start" if px < frame.left + frame.width * 0.6 else "end"
        svg.text(px + (6 if anchor == "start" else -6), frame.top + 36, text, size=12, anchor=anchor, fill=INK,
                 weight="600", **HALO)
        if chosen.batch not in curve.measured and first < chosen.batch <= cap:
            low, high = curve.interval(chosen.batch)
            svg.open("g", tooltip=f"batch {chosen.batch}, {chosen.basis} (never measured): {percentile} "
                                  f"{fmt.ms(curve.at(chosen.batch))} ms [{fmt.ms(low)}–{fmt.ms(high)}]")
            svg.add("circle", cx=px, cy=y.clamp(curve.at(chosen.batch)), r=5.5, fill="#ffffff", stroke=color,
                    stroke_width=2.2)
            svg.close()
    for point in measured:
        if not 0 < point.batch <= cap:
            continue
        px, py = x(point.batch), y.clamp(point.latency_ms)
        interval = point.interval_ms
        text = f" [{fmt.ms(interval[0])}–{fmt.ms(interval[1])}]" if interval else ""
        svg.open("g", tooltip=f"batch {point.batch}, measured ({point.phase}): {percentile} "
                              f"{fmt.ms(point.latency_ms)} ms{text}")
        if interval and interval[1] > interval[0]:
            top_px, bottom_px = y.clamp(interval[1]), y.clamp(interval[0])
            svg.line(px, top_px, px, bottom_px, color, 1.4, stroke_opacity=0.6)
            svg.line(px - 3, top_px, px + 3, top_px, color, 1.4, stroke_opacity=0.6)
            svg.line(px - 3, bottom_px, px + 3, bottom_px, color, 1.4, stroke_opacity=0.6)
        svg.add("circle", cx=px, cy=py, r=5.5, fill=color, stroke="#ffffff", stroke_width=1.5)
        svg.close()
    items = [LegendItem("measured (bar: 95% interval)", "dot", color), LegendItem("fitted line", "line", color)]
    if cap > largest:
        items.append(LegendItem("extrapolated", "dash", color))
    items.append(LegendItem("fitted figures' 95% interval", "box", color))
    if chosen is not None and chosen.batch not in curve.measured:
        items.append(LegendItem("sized batch (never measured)", "ring", color))
    if slo_shown:
        items.append(LegendItem("SLO", "dash", SLO))
    legend(svg, frame.left, 24, items, max_x=frame.right)
    return svg.markup()


# ---- latency distributions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Distribution:
    label: str
    detail: str
    samples_ms: tuple[float, ...]
    at_percentile_ms: float | None
    color: str


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


MAX_DOTS = 300


def distributions(items: Sequence[Distribution], *, slo_ms: float | None, percentile: str) -> Markup:
    """One row per candidate: every kept sample as a jittered dot, the interquartile box with the median,
    whiskers from the 5th to the 95th percentile, a marker at the SLO percentile and the SLO as a line."""
    items = [i for i in items if i.samples_ms]
    if not items:
        return note("No latency samples were kept for the candidates.")
    width, row_h = 960, 58
    frame = Frame(24, 56, width - 24, 56 + row_h * len(items))
    height = frame.bottom + 44
    values = [v for i in items for v in i.samples_ms] + [i.at_percentile_ms for i in items
                                                         if _number(i.at_percentile_ms)]
    slo_shown = _number(slo_ms) and slo_ms > 0 and slo_ms <= max(values) * 1.6
    # a log axis when the tail spans decades (an outlier 1000x the median would flatten everything else)
    x = auto_scale(values + ([slo_ms] if slo_shown else []), frame.left, frame.right, pad=0.03)
    svg = Svg(width, height, f"Latency distributions of the {len(items)} fastest candidates")
    svg.add("rect", x=frame.left, y=frame.top, width=frame.width, height=frame.height, fill="#ffffff")
    for tick in x.ticks():
        svg.line(x(tick), frame.top, x(tick), frame.bottom, GRID)
        svg.text(x(tick), frame.bottom + 17, tick_label(tick), size=11, anchor="middle", fill=MUTED)
    svg.line(frame.left, frame.bottom, frame.right, frame.bottom, AXIS)
    svg.text((frame.left + frame.right) / 2, frame.bottom + 38,
             f"latency per inference (ms{', log scale' if x.log else ''})", size=12.5, anchor="middle")
    for index, item in enumerate(items):
        top = frame.top + index * row_h
        if index:
            svg.line(frame.left, top, frame.right, top, GRID)
        ordered = sorted(item.samples_ms)
        q = {f: _quantile(ordered, f) for f in (0.05, 0.25, 0.5, 0.75, 0.95)}
        mid = top + 38
        room = (frame.width - len(item.detail) * 11.5 * CHAR_PX - 28) / (12.5 * CHAR_PX)
        label = item.label if len(item.label) <= room else item.label[:max(int(room) - 1, 8)] + "…"
        svg.open("g", tooltip=item.label)
        svg.text(frame.left + 4, top + 17, label, size=12.5, weight="600", **HALO)
        svg.close()
        svg.text(frame.right - 4, top + 17, item.detail, size=11.5, anchor="end", fill=MUTED, **HALO)
        stride = max(1, math.ceil(len(ordered) / MAX_DOTS))
        for k, value in enumerate(ordered[::stride]):
            jitter = ((k * 0.6180339887) % 1 - 0.5) * 16
            svg.add("circle", cx=x(value), cy=mid + jitter, r=1.9, fill=item.color, fill_opacity=0.35)
        svg.line(x(q[0.05]), mid, x(q[0.25]), mid, INK, 1.2)
        svg.line(x(q[0.75]), mid, x(q[0.95]), mid, INK, 1.2)
        for end in (0.05, 0.95):
            svg.line(x(q[end]), mid - 5, x(q[end]), mid + 5, INK, 1.2)
        svg.open("g", tooltip=f"{item.label}: median {fmt.ms(q[0.5])} ms, quartiles {fmt.ms(q[0.25])}–"
                              f"{fmt.ms(q[0.75])} ms, 5th–95th percentile {fmt.ms(q[0.05])}–{fmt.ms(q[0.95])} ms, "
                              f"{len(ordered)} samples")
        svg.add("rect", x=x(q[0.25]), y=mid - 9, width=max(x(q[0.75]) - x(q[0.25]), 1.5), height=18,
                fill=item.color, fill_opacity=0.18, stroke=item.color, stroke_width=1.4, rx=2)
        svg.line(x(q[0.5]), mid - 9, x(q[0.5]), mid + 9, item.color, 2.6)
        svg.close()
        if _number(item.at_percentile_ms):
            px = x(item.at_percentile_ms)
            svg.open("g", tooltip=f"{percentile}: {fmt.ms(item.at_percentile_ms)} ms")
            svg.add("path", d=f"M{px:.1f},{mid - 9:.1f} l5,-7 h-10 z", fill=INK)
            svg.close()
    if slo_shown:
        px = x(slo_ms)
        svg.line(px, frame.top - 4, px, frame.bottom, SLO, 1.6, stroke_dasharray="7 4")
        text = f"SLO {fmt.number(slo_ms, 4)} ms"
        near_edge = px + len(text) * 11.5 * CHAR_PX / 2 > frame.right
        svg.text(px if not near_edge else px - 4, frame.top - 8, text, size=11.5,
                 anchor="end" if near_edge else "middle", fill=SLO, weight="600")
    elif _number(slo_ms):
        svg.text(frame.right, frame.top - 8, f"SLO {fmt.number(slo_ms, 4)} ms →", size=11.5, anchor="end", fill=SLO,
                 weight="600")
    legend(svg, frame.left, 22, [LegendItem("samples", "dot", "#93c5fd"), LegendItem("quartiles and median", "box",
                                                                                    SERIES[0]),
                                 LegendItem("5th–95th percentile", "line", INK),
                                 LegendItem(percentile, "triangle", INK),
                                 LegendItem("SLO", "dash", SLO)], max_x=frame.right - 120)
    return svg.markup()


# ---- model: work and time per operator class, operator mix --------------------------------------------------------


CLASS_METRICS = (("flops", "share of FLOPs", "#1e40af", lambda v: fmt.si(v, "FLOP")),
                 ("bytes", "share of bytes moved", "#60a5fa", lambda v: fmt.si(v, "B")),
                 ("ms", "share of measured time", "#f59e0b", lambda v: f"{fmt.ms(v)} ms"))


def work_and_time(flops: dict, bytes_moved: dict, time_ms: dict | None) -> Markup:
    """Per operator class: its share of the FLOPs, of the bytes moved and (when profiled) of the time."""
    metrics = {"flops": _positive(flops), "bytes": _positive(bytes_moved), "ms": _positive(time_ms or {})}
    metrics = {k: v for k, v in metrics.items() if v}
    if not metrics:
        return note("No per-class figures.")
    order_by = metrics.get("ms") or metrics.get("flops") or next(iter(metrics.values()))
    classes = sorted({c for values in metrics.values() for c in values}, key=lambda c: -order_by.get(c, 0))
    shown = [m for m in CLASS_METRICS if m[0] in metrics]
    bar_h, gap = 12, 12
    row_h = bar_h * len(shown) + gap
    width, label_w, value_w = 560, 118, 150
    top = 40
    height = top + row_h * len(classes) + 6
    svg = Svg(width, height, "Share of FLOPs, bytes moved and time per operator class")
    legend(svg, 8, 18, [LegendItem(m[1], "square", m[2]) for m in shown], max_x=width)
    span = width - label_w - value_w
    totals = {k: sum(v.values()) for k, v in metrics.items()}
    for index, name in enumerate(classes):
        y0 = top + index * row_h
        svg.text(label_w - 8, y0 + row_h / 2 + 1, name.replace("_", " "), size=12, anchor="end")
        for k, (key, title, color, unit) in enumerate(shown):
            value = metrics[key].get(name, 0.0)
            share = value / totals[key] if totals[key] else 0.0
            y = y0 + k * bar_h
            svg.open("g", tooltip=f"{name}: {unit(value)}, {fmt.percent(share, 1)} of the total ({title})")
            svg.add("rect", x=label_w, y=y, width=max(span * share, 1), height=bar_h - 2, fill=color, rx=1.5)
            svg.close()
            svg.text(label_w + max(span * share, 1) + 6, y + bar_h - 3, f"{fmt.percent(share)} · {unit(value)}",
                     size=10.5, fill=MUTED)
    return svg.markup()


def _positive(values) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {str(k): float(v) for k, v in values.items() if _number(v) and v > 0}


def operator_mix(histogram: dict, top: int = 14) -> Markup:
    """Operator types by node count, largest first; the tail folded into one bar."""
    counts = sorted(_positive(histogram).items(), key=lambda kv: -kv[1])
    if not counts:
        return note("No operator histogram.")
    folded = ""
    if len(counts) > top:
        rest = counts[top - 1:]
        folded = ", ".join(f"{name} ×{count:g}" for name, count in rest)
        counts = counts[:top - 1] + [(f"{len(rest)} other types", sum(v for _, v in rest))]
    width, label_w, row_h = 560, 170, 21
    height = row_h * len(counts) + 10
    most = counts[0][1]
    svg = Svg(width, height, "Operator mix: nodes per operator type")
    for index, (name, count) in enumerate(counts):
        y = 4 + index * row_h
        shown = name if len(name) <= 24 else name[:23] + "…"
        tail = f" ({folded})" if folded and index == len(counts) - 1 else ""
        svg.open("g", tooltip=f"{name}: {count:g} nodes{tail}")
        svg.text(label_w - 8, y + 13, shown, size=11.5, anchor="end")
        length = (width - label_w - 50) * count / most
        svg.add("rect", x=label_w, y=y + 2, width=max(length, 1), height=row_h - 7, fill="#64748b", rx=1.5)
        svg.text(label_w + length + 6, y + 13, f"{count:g}", size=11, fill=MUTED)
        svg.close()
    return svg.markup()


# ---- roofline -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RooflinePoint:
    label: str
    intensity: float  # FLOP per byte
    gflops: float


def roofline(peak_gflops, bandwidth_gbs, achieved: RooflinePoint | None, classes: Sequence[RooflinePoint],
             machine: str) -> Markup:
    """The machine's roofline (bandwidth slope, compute ceiling, ridge point) on log-log axes, with where the
    whole model and each operator class sit on it."""
    if not (_number(peak_gflops) and _number(bandwidth_gbs) and peak_gflops > 0 and bandwidth_gbs > 0):
        return note("No roofline: the machine's peak compute or bandwidth is unknown.")
    points = ([achieved] if achieved else []) + list(classes)
    points = [p for p in points if _number(p.intensity) and _number(p.gflops) and p.intensity > 0 and p.gflops > 0]
    ridge = peak_gflops / bandwidth_gbs
    xs = [ridge] + [p.intensity for p in points]
    width, height = 560, 380
    frame = Frame(74, 40, width - 22, height - 58)
    x = auto_scale([min(xs) / 4, max(xs) * 4], frame.left, frame.right, log=True)
    ys = [peak_gflops * 1.6] + [p.gflops for p in points] + [x.lo * bandwidth_gbs]
    y = auto_scale([max(min(ys) / 1.5, peak_gflops / 1e4), max(ys)], frame.bottom, frame.top, log=True)
    svg = Svg(width, height, f"Roofline of {machine}")
    axes(svg, frame, x, y, x_title="arithmetic intensity (FLOP per byte, log)",
         y_title="performance (GFLOP/s, log)")
    start = max(x.lo, y.lo / bandwidth_gbs)
    roof = [(start, start * bandwidth_gbs), (ridge, peak_gflops), (x.hi, peak_gflops)]
    pixel_roof = [(x(a), y(b)) for a, b in roof]
    svg.add("polygon", points=" ".join(f"{a:.1f},{b:.1f}" for a, b in
                                       pixel_roof + [(x(x.hi), frame.bottom), (x(start), frame.bottom)]),
            fill="#e0e7ff", fill_opacity=0.45)
    svg.polyline(pixel_roof, INK, 2.4)
    svg.line(x(ridge), y(peak_gflops), x(ridge), frame.bottom, AXIS, 1, stroke_dasharray="3 3")
    svg.text(x(ridge) + 4, frame.bottom - 6, f"ridge {ridge:.3g} FLOP/B", size=10.5, fill=MUTED)
    svg.text(frame.right - 4, y(peak_gflops) - 7, f"peak {tick_label(peak_gflops)} GFLOP/s", size=11.5,
             anchor="end", weight="600")
    (ax, ay), (bx, by) = pixel_roof[0], pixel_roof[1]
    angle = math.degrees(math.atan2(by - ay, bx - ax))
    mx, my = ax + (bx - ax) * 0.45, ay + (by - ay) * 0.45
    svg.text(mx, my - 8, f"{bandwidth_gbs:.3g} GB/s memory bandwidth", size=11, anchor="middle", weight="600",
             transform=f"rotate({angle:.1f} {mx:.1f} {my:.1f})")
    for point in classes:
        if point in points:
            px, py = x(point.intensity), y(point.gflops)
            svg.open("g", tooltip=f"{point.label}: {point.gflops:.3g} GFLOP/s at {point.intensity:.3g} FLOP/B")
            svg.add("circle", cx=px, cy=py, r=4, fill="#ffffff", stroke=MUTED, stroke_width=1.6)
            svg.text(px + 7, py + 4, point.label.replace("_", " "), size=10.5, fill=MUTED)
            svg.close()
    if achieved and achieved in points:
        px, py = x(achieved.intensity), y(achieved.gflops)
        roof_here = min(peak_gflops, achieved.intensity * bandwidth_gbs)
        svg.line(px, py, px, y(roof_here), SERIES[0], 1.2, stroke_dasharray="2 3")
        svg.open("g", tooltip=f"{achieved.label}: {achieved.gflops:.3g} GFLOP/s at {achieved.intensity:.3g} FLOP/B "
                              f"({achieved.gflops / roof_here:.0%} of the roof there)")
        svg.add("circle", cx=px, cy=py, r=7, fill=SERIES[0], stroke="#ffffff", stroke_width=2)
        svg.close()
        anchor = "start" if px < frame.left + frame.width * 0.6 else "end"
        svg.text(px + (10 if anchor == "start" else -10), py + 18, f"{achieved.label}: {achieved.gflops:.3g} GFLOP/s",
                 size=12, anchor=anchor, fill=SERIES[0], weight="600", stroke="#ffffff", stroke_width=3.5,
                 paint_order="stroke")
    return svg.markup()


# ---- generative runs: fit map, latency against load, Pareto ---------------------------------------------------


def _context_label(tokens: float) -> str:
    """1024 -> 1k, 131072 -> 128k; other lengths as they are (4,000)."""
    tokens = int(tokens)
    return f"{tokens // 1024}k" if tokens >= 1024 and tokens % 1024 == 0 else f"{tokens:,}"


def llm_fit_map(fit_map: Sequence[dict] | None, *, max_num_seqs: int | None = None) -> Markup:
    """The concurrent sequences one replica's KV cache holds against the context length (log-log), the planned
    context marked, the engine's max_num_seqs as a line (the engine runs no more at once, whatever fits)."""
    points = sorted((p for p in fit_map or () if _number(p.get("context")) and p["context"] > 0
                     and _number(p.get("max_concurrent_sequences"))), key=lambda p: p["context"])
    fitting = [p for p in points if p["max_concurrent_sequences"] >= 1]
    if not fitting:
        return note("No fit map: there is no recommended configuration.")
    width, height = 960, 360
    frame = Frame(84, 58, width - 28, height - 58)
    contexts = [p["context"] for p in points]
    x = Scale(min(contexts) / 1.4, max(contexts) * 1.4, frame.left, frame.right, log=True)
    counts = [p["max_concurrent_sequences"] for p in fitting]
    cap_shown = _number(max_num_seqs) and max_num_seqs > 0
    y = auto_scale(counts + ([max_num_seqs] if cap_shown else []), frame.bottom, frame.top, log=True)
    svg = Svg(width, height, "Concurrent sequences the KV cache holds per replica, against the context length")
    axes(svg, frame, x, y, x_title="context length (tokens per sequence, log scale)",
         y_title="max concurrent sequences (log)", x_fmt=_context_label, x_ticks=contexts)
    placer = _Labels(frame)
    if cap_shown:
        py = y.clamp(max_num_seqs)
        svg.line(frame.left, py, frame.right, py, MUTED, 1.4, stroke_dasharray="6 4")
        text = f"engine cap: max_num_seqs {max_num_seqs}"
        svg.text(frame.right - 6, py - 6, text, size=11.5, anchor="end", fill=MUTED, weight="600", **HALO)
        placer.reserve(frame.right - 6, py - 6, text, 11.5, "end")
    svg.polyline([(x(p["context"]), y(p["max_concurrent_sequences"])) for p in fitting], SERIES[0], 2.2)
    placer.boxes += [(x(p["context"]) - 6, y(p["max_concurrent_sequences"]) - 6, x(p["context"]) + 6,
                      y(p["max_concurrent_sequences"]) + 6) for p in fitting]
    for p in points:
        px, count = x(p["context"]), p["max_concurrent_sequences"]
        per_instance = p.get("max_concurrent_sequences_per_instance")
        also = f", {per_instance:,} per instance" if _number(per_instance) and per_instance != count else ""
        if count < 1:
            svg.open("g", tooltip=f"context {p['context']:,}: not one sequence fits the KV cache")
            svg.text(px, frame.bottom - 8, "×", size=16, anchor="middle", fill=MISSES, weight="700")
            svg.close()
            continue
        py = y(count)
        svg.open("g", tooltip=f"context {p['context']:,} tokens: {count:,} sequences per replica{also}")
        svg.add("circle", cx=px, cy=py, r=7 if p.get("configured") else 4.5, fill=SERIES[0], stroke="#ffffff",
                stroke_width=1.5)
        svg.close()
        if p.get("configured"):
            svg.add("circle", cx=px, cy=py, r=11, fill="none", stroke=INK, stroke_width=1.5)
            placer.place(svg, px, py, f"planned context {_context_label(p['context'])}: {count:,} sequences", INK)
    items = [LegendItem("sequences per replica", "dot", SERIES[0]), LegendItem("planned context", "ring", INK)]
    if cap_shown:
        items.append(LegendItem("max_num_seqs", "dash", MUTED))
    if len(fitting) < len(points):
        items.append(LegendItem("× not one sequence fits", "line", MISSES))
    legend(svg, frame.left, 24, items, max_x=frame.right)
    return svg.markup()


LOAD_METRICS = (("ttft_ms", "TTFT", SERIES[0]), ("itl_ms", "ITL", SERIES[1]))  # each SLO is named as its metric


def _load_panel(svg: Svg, frame: Frame, curve: list[dict], metric: str, title: str, slo_ms, percentile: str,
                color: str, chosen_rate: float | None) -> None:
    """One metric of the load curve in `frame`: the predicted line, its interval band, the SLO and the planned
    rate. The y axis covers the points up to the planned rate and the SLO; higher figures sit on the top edge."""
    def interval(p: dict) -> tuple[float | None, float | None]:
        pair = p.get(f"{metric}_interval") or (None, None)
        return (pair[0] if _number(pair[0]) else None), (pair[1] if _number(pair[1]) else None)

    rates = [p["rate_rps"] for p in curve]
    x = Scale(0.0, max(rates) * 1.06, frame.left, frame.right)
    within = [p for p in curve if chosen_rate is None or p["rate_rps"] <= chosen_rate * 1.0001] or curve
    firm = [v for p in within for v in (p.get(metric), interval(p)[1]) if _number(v)]
    slo_shown = _number(slo_ms) and slo_ms > 0
    top = max(firm + ([slo_ms * 1.5] if slo_shown else []) + [1e-3])
    values = [v for p in curve for v in (p.get(metric), interval(p)[1]) if _number(v) and v <= top * 1.3]
    y = auto_scale(values + [top] + ([slo_ms] if slo_shown else []), frame.bottom, frame.top, log=False, zero=True,
                   pad=0.06)
    axes(svg, frame, x, y, x_title="arrival rate per replica (requests/s)", y_title=f"{title} {percentile} (ms)")
    band = [p for p in curve if _number(p.get(metric))]
    if band:
        upper = [(x(p["rate_rps"]), y.clamp(interval(p)[1]) if interval(p)[1] is not None else frame.top)
                 for p in band]
        lower = [(x(p["rate_rps"]), y.clamp(interval(p)[0] if interval(p)[0] is not None else p[metric]))
                 for p in reversed(band)]
        svg.open("g", tooltip=f"{title} {percentile}: 95% interval (efficiency band × block bootstrap); at the top "
                              "edge where it is off the scale or unbounded")
        svg.add("polygon", points=" ".join(f"{a:.1f},{b:.1f}" for a, b in upper + lower), fill=color,
                fill_opacity=0.13)
        svg.close()
        svg.polyline([(x(p["rate_rps"]), y.clamp(p[metric])) for p in band], color, 2.2)
    if slo_shown:
        py = y.clamp(slo_ms)
        svg.line(frame.left, py, frame.right, py, SLO, 1.6, stroke_dasharray="7 4")
        svg.text(frame.left + 8, py - 6, f"SLO: {percentile} ≤ {fmt.number(slo_ms, 4)} ms", size=11.5, fill=SLO,
                 weight="600", **HALO)
    if chosen_rate is not None:
        px = x(chosen_rate)
        svg.line(px, frame.top, px, frame.bottom, INK, 1.2, stroke_dasharray="2 3")
        anchor = "end" if px > frame.left + frame.width * 0.6 else "start"
        svg.text(px + (-6 if anchor == "end" else 6), frame.top + 14, f"planned {fmt.number(chosen_rate, 3)}/s",
                 size=11.5, anchor=anchor, fill=INK, weight="600", **HALO)
    for p in curve:
        value, (low, high) = p.get(metric), interval(p)
        px = x(p["rate_rps"])
        color_point = MEETS if p.get("meets_slo") else MISSES
        state = "meets every SLO" if p.get("meets_slo") else "misses an SLO"
        if p.get("stable_pessimistic") is False or p.get("stable") is False:
            state += "; the queue grows without bound"
        tooltip = (f"{fmt.number(p['rate_rps'], 3)} requests/s per replica ({fmt.number(p.get('fraction'), 3)}× the "
                   f"planned rate): {title} {percentile} {fmt.ms(value)} ms [{fmt.ms(low)}–"
                   f"{fmt.ms(high) if high is not None else 'unbounded'}]; {state}")
        svg.open("g", tooltip=tooltip)
        if not _number(value):
            svg.text(px, frame.top + 30, "?", size=13, anchor="middle", fill=MISSES, weight="700")
        elif value > y.hi:
            svg.add("path", d=f"M{px:.1f},{frame.top:.1f} l6,9 h-12 z", fill=color_point)
        else:
            svg.add("circle", cx=px, cy=y(value), r=5, fill=color_point, stroke="#ffffff", stroke_width=1.5)
        svg.close()


def llm_load_curve(curve: Sequence[dict] | None, slo: dict) -> Markup:
    """TTFT and ITL at the SLO percentile against the per-replica arrival rate, side by side: the predicted line,
    its 95% interval as a band, the SLO lines, each point coloured by whether it meets every SLO (at the interval's
    pessimistic end), and the planned rate marked."""
    curve = sorted((p for p in curve or () if _number(p.get("rate_rps")) and p["rate_rps"] > 0),
                   key=lambda p: p["rate_rps"])
    if not curve:
        return note("No load curve: there is no recommended configuration.")
    percentile = slo.get("percentile") or curve[0].get("percentile") or "p99"
    chosen = next((p["rate_rps"] for p in curve if p.get("fraction") == 1.0), None)
    width, height = 960, 380
    svg = Svg(width, height, f"TTFT and ITL {percentile} against the arrival rate per replica")
    half = width / 2
    for index, (metric, title, color) in enumerate(LOAD_METRICS):
        svg.open("g", transform=f"translate({index * half:.0f} 0)")  # axes() puts the y title at x=16 of the group
        _load_panel(svg, Frame(76, 64, half - 24, height - 58), curve, metric, title, slo.get(metric), percentile,
                    color, chosen)
        svg.close()
    items = [LegendItem(f"TTFT {percentile}", "line", SERIES[0]), LegendItem(f"ITL {percentile}", "line", SERIES[1]),
             LegendItem("95% interval", "box", MUTED), LegendItem("meets every SLO", "dot", MEETS),
             LegendItem("misses (▲: off the scale)", "dot", MISSES), LegendItem("SLO", "dash", SLO),
             LegendItem("planned rate", "dash", INK)]
    legend(svg, 76, 24, items, max_x=width - 24)
    return svg.markup()


def llm_pareto(rows: Sequence[dict], pareto: Sequence[str], *, recommended: str | None = None) -> Markup:
    """Each instance's decode speed per user (1000 / ITL at the SLO percentile; bar: from the ITL interval) against
    its cost per million output tokens: the Pareto frontier filled and joined by a step line, the rest hollow, the
    recommendation ringed."""
    rows = [r for r in rows or () if _number(r.get("cost_per_million_output_tokens"))
            and r["cost_per_million_output_tokens"] > 0 and _number(r.get("itl_ms")) and r["itl_ms"] > 0]
    if not rows:
        return note("No Pareto plot: no instance meets the SLOs.")

    def speed(row: dict) -> float:
        return 1000.0 / row["itl_ms"]

    def speed_interval(row: dict) -> tuple[float, float]:
        pair = row.get("itl_ms_interval") or ()
        low = 1000.0 / pair[1] if len(pair) == 2 and _number(pair[1]) and pair[1] > 0 else speed(row)
        high = 1000.0 / pair[0] if len(pair) == 2 and _number(pair[0]) and pair[0] > 0 else speed(row)
        return low, high

    width, height = 960, 440
    frame = Frame(84, 64, width - 28, height - 58)
    frontier_names = set(pareto or ())
    costs = [r["cost_per_million_output_tokens"] for r in rows]
    speeds = [v for r in rows for v in (speed(r), *speed_interval(r))]
    x = auto_scale(costs, frame.left, frame.right, pad=0.06)
    y = auto_scale(speeds + [max(speeds) * 1.15], frame.bottom, frame.top, pad=0.06)
    svg = Svg(width, height, f"Decode speed per user against cost per million output tokens, {len(rows)} instances")
    axes(svg, frame, x, y, x_title=f"cost per million output tokens (USD{', log scale' if x.log else ''})",
         y_title=f"output tokens/s per user{' (log)' if y.log else ''}", x_fmt=lambda v: "$" + tick_label(v))
    placer = _Labels(frame)
    placer.boxes += [(x(r["cost_per_million_output_tokens"]) - 6, y(speed(r)) - 6,
                      x(r["cost_per_million_output_tokens"]) + 6, y(speed(r)) + 6) for r in rows]
    frontier = sorted((r for r in rows if r["instance"] in frontier_names),
                      key=lambda r: r["cost_per_million_output_tokens"])
    if len(frontier) > 1:
        points = [(x(frontier[0]["cost_per_million_output_tokens"]), y(speed(frontier[0])))]
        for row in frontier[1:]:
            px, py = x(row["cost_per_million_output_tokens"]), y(speed(row))
            points += [(px, points[-1][1]), (px, py)]
        svg.polyline(points, PARETO, 2, stroke_opacity=0.75)
    for row in sorted(rows, key=lambda r: r["instance"] in frontier_names):
        on = row["instance"] in frontier_names
        color = PARETO if on else MUTED
        px, py = x(row["cost_per_million_output_tokens"]), y(speed(row))
        low, high = speed_interval(row)
        svg.open("g", tooltip=f"{row['instance']} ({row.get('provider', '?')}) · {row.get('precision', '?')}, TP "
                              f"{row.get('tensor_parallel', '?')} × {row.get('replicas', '?')}\n"
                              f"{fmt.number(speed(row), 3)} tokens/s per user [{fmt.number(low, 3)}–"
                              f"{fmt.number(high, 3)}] · {fmt.money(row['cost_per_million_output_tokens'])} per "
                              f"million output tokens{' · Pareto frontier' if on else ''}")
        if high > low:
            svg.line(px, y.clamp(high), px, y.clamp(low), color, 1.4, stroke_opacity=0.55)
        if on:
            svg.add("circle", cx=px, cy=py, r=6, fill=color, stroke="#ffffff", stroke_width=1.5)
        else:
            svg.add("circle", cx=px, cy=py, r=5, fill="#ffffff", stroke=color, stroke_width=2)
        svg.close()
    for row in rows:
        px, py = x(row["cost_per_million_output_tokens"]), y(speed(row))
        if row["instance"] == recommended:
            svg.add("circle", cx=px, cy=py, r=11, fill="none", stroke=INK, stroke_width=1.5)
            placer.place(svg, px, py, f"recommended: {row['instance']}", INK)
        elif row["instance"] in frontier_names:
            placer.place(svg, px, py, row["instance"], PARETO, size=11.5)
    items = [LegendItem("Pareto frontier", "dot", PARETO), LegendItem("dominated", "ring", MUTED),
             LegendItem("bar: from the ITL 95% interval", "line", MUTED)]
    if recommended:
        items.append(LegendItem("recommended", "ring", INK))
    legend(svg, frame.left, 24, items, max_x=frame.right)
    return svg.markup()


def llm_charts(report: dict) -> dict[str, Markup]:
    """The three charts of a generative report, from report.json alone (what render_llm_html passes the
    template as `charts`)."""
    rec = report.get("recommendation") or {}
    return {"fit_map": llm_fit_map(report.get("fit_map"), max_num_seqs=rec.get("max_num_seqs")),
            "load_curve": llm_load_curve(report.get("load_curve"), report.get("slo") or {}),
            "pareto": llm_pareto(report.get("ranking") or [], report.get("pareto") or [],
                                 recommended=rec.get("instance"))}
