"""Inline SVG plots built from the report dict. Every text node is escaped; no external resources."""

from __future__ import annotations

import math
from html import escape

PALETTE = {"measured": "#1f5fa8", "estimated": "#d9822b", "slo": "#c0392b", "pareto": "#2e8b57",
           "grid": "#e3e6ea", "axis": "#4a5560", "text": "#1d2430"}
WIDTH, HEIGHT = 760, 420
MARGIN = {"left": 70, "right": 20, "top": 20, "bottom": 55}


def _log_scale(values: list[float], lo_px: float, hi_px: float):
    low = math.log10(min(values))
    high = math.log10(max(values))
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    low, high = math.floor(low * 2) / 2, math.ceil(high * 2) / 2

    def scale(value: float) -> float:
        return lo_px + (math.log10(max(value, 1e-12)) - low) / (high - low) * (hi_px - lo_px)

    ticks = sorted({10 ** e * m for e in range(math.floor(low), math.ceil(high) + 1) for m in (1, 2, 5)
                    if low - 1e-9 <= math.log10(10 ** e * m) <= high + 1e-9})
    return scale, ticks


def _fmt(value: float) -> str:
    return f"{value:g}" if value >= 0.01 else f"{value:.0e}"


def latency_vs_price(ranking: list[dict], slo_ms: float, pareto: list[str], percentile: str) -> str:
    """Latency at the SLO percentile against price per hour: measured filled, estimated hollow with interval
    bars, the SLO as a horizontal line and the Pareto frontier as a step line."""
    rows = [r for r in ranking if r.get("price_per_hour")]
    if not rows:
        return '<p class="muted">No priced instance to plot.</p>'
    x0, x1 = MARGIN["left"], WIDTH - MARGIN["right"]
    y0, y1 = HEIGHT - MARGIN["bottom"], MARGIN["top"]
    prices = [r["price_per_hour"] for r in rows]
    latencies = [v for r in rows for v in (r["latency_ms_interval"][0], r["latency_ms_interval"][1], r["latency_ms"])
                 if v and v > 0] + [slo_ms]
    sx, xticks = _log_scale(prices, x0, x1)
    sy, yticks = _log_scale(latencies, y0, y1)
    parts = [f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="Latency against price per hour for every instance">']
    for tick in xticks:
        x = sx(tick)
        parts.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="{PALETTE["grid"]}"/>'
                     f'<text x="{x:.1f}" y="{y0 + 18}" text-anchor="middle" class="tick">${_fmt(tick)}</text>')
    for tick in yticks:
        y = sy(tick)
        parts.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="{PALETTE["grid"]}"/>'
                     f'<text x="{x0 - 8}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(tick)}</text>')
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="{PALETTE["axis"]}"/>'
                 f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="{PALETTE["axis"]}"/>')
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{HEIGHT - 12}" text-anchor="middle" class="label">'
                 f'price per hour (USD, log scale)</text>')
    parts.append(f'<text x="16" y="{(y0 + y1) / 2}" text-anchor="middle" class="label" '
                 f'transform="rotate(-90 16 {(y0 + y1) / 2})">{escape(percentile)} latency (ms, log scale)</text>')
    slo_y = sy(slo_ms)
    parts.append(f'<line x1="{x0}" y1="{slo_y:.1f}" x2="{x1}" y2="{slo_y:.1f}" stroke="{PALETTE["slo"]}" '
                 f'stroke-dasharray="6 4" stroke-width="1.5"/><text x="{x1 - 4}" y="{slo_y - 6:.1f}" '
                 f'text-anchor="end" class="slo">SLO {slo_ms:g} ms</text>')
    frontier = sorted((r for r in rows if r["instance"] in pareto), key=lambda r: r["price_per_hour"])
    if len(frontier) > 1:
        points = []
        for index, row in enumerate(frontier):
            x, y = sx(row["price_per_hour"]), sy(row["latency_ms"])
            if index:
                points.append(f"{x:.1f},{points[-1].split(',')[1]}")
            points.append(f"{x:.1f},{y:.1f}")
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{PALETTE["pareto"]}" '
                     f'stroke-width="1.5" opacity="0.8"/>')
    for row in rows:
        x, y = sx(row["price_per_hour"]), sy(row["latency_ms"])
        lo, hi = sy(max(row["latency_ms_interval"][0], 1e-12)), sy(max(row["latency_ms_interval"][1], 1e-12))
        color = PALETTE[row["source"]] if row["source"] in PALETTE else PALETTE["axis"]
        fill = color if row["source"] == "measured" else "white"
        title = (f'{row["instance"]} ({row["provider"]}): {row["latency_ms"]:.3g} ms '
                 f'[{row["latency_ms_interval"][0]:.3g}, {row["latency_ms_interval"][1]:.3g}], '
                 f'${row["price_per_hour"]:g}/h, {row["source"]}, {row["backend"]}')
        parts.append(f'<g><title>{escape(title)}</title>'
                     f'<line x1="{x:.1f}" y1="{lo:.1f}" x2="{x:.1f}" y2="{hi:.1f}" stroke="{color}" opacity="0.6"/>'
                     f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="{color}" stroke-width="2"/></g>')
    legend_y = y1 + 6
    parts.append(f'<g class="legend" transform="translate({x0 + 12},{legend_y})">'
                 f'<circle cx="6" cy="6" r="5" fill="{PALETTE["measured"]}"/><text x="16" y="10">measured</text>'
                 f'<circle cx="96" cy="6" r="5" fill="white" stroke="{PALETTE["estimated"]}" stroke-width="2"/>'
                 f'<text x="106" y="10">estimated (bar: interval)</text>'
                 f'<line x1="270" y1="6" x2="290" y2="6" stroke="{PALETTE["pareto"]}" stroke-width="1.5"/>'
                 f'<text x="296" y="10">Pareto frontier</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def bars(values: dict[str, float], unit: str, width: int = 520) -> str:
    """Horizontal bars, largest first (operator mix, time per operator class)."""
    items = sorted(((k, v) for k, v in values.items() if v and v > 0), key=lambda kv: -kv[1])
    if not items:
        return '<p class="muted">Nothing to show.</p>'
    top = items[0][1]
    row_h = 22
    parts = [f'<svg class="bars" viewBox="0 0 {width} {row_h * len(items) + 6}" role="img">']
    for index, (label, value) in enumerate(items):
        y = index * row_h + 3
        length = (width - 260) * value / top
        parts.append(f'<text x="130" y="{y + 14}" text-anchor="end" class="tick">{escape(label)}</text>'
                     f'<rect x="138" y="{y}" width="{max(length, 1):.1f}" height="16" rx="2" '
                     f'fill="{PALETTE["measured"]}"/>'
                     f'<text x="{144 + length:.1f}" y="{y + 13}" class="tick">{value:.3g} {escape(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def distributions(trials: list[dict], percentile: str, width: int = 760) -> str:
    """Box plots (p5-p95 whiskers, quartile box, median) of the kept latency samples of the top candidates."""
    items = [t for t in trials if (t.get("latency_ms") or {}).get("samples_ms")]
    if not items:
        return '<p class="muted">No samples kept.</p>'
    values = [v for t in items for v in t["latency_ms"]["samples_ms"]]
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    row_h = 30
    left, right = 260, width - 20

    def sx(v):
        return left + (v - low) / span * (right - left)

    parts = [f'<svg class="plot" viewBox="0 0 {width} {row_h * len(items) + 30}" role="img">']
    for index, trial in enumerate(items):
        samples = sorted(trial["latency_ms"]["samples_ms"])
        q = lambda f: samples[min(len(samples) - 1, int(f * (len(samples) - 1)))]  # noqa: E731
        y = index * row_h + 8
        label = f'{trial["backend"]} {trial["target"]} b{trial["batch_size"]} ({trial["phase"]})'
        parts.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end" class="tick">{escape(label)}</text>'
                     f'<line x1="{sx(q(0.05)):.1f}" y1="{y + 9}" x2="{sx(q(0.95)):.1f}" y2="{y + 9}" '
                     f'stroke="{PALETTE["axis"]}"/>'
                     f'<rect x="{sx(q(0.25)):.1f}" y="{y + 2}" width="{max(sx(q(0.75)) - sx(q(0.25)), 1):.1f}" '
                     f'height="14" fill="#dce8f5" stroke="{PALETTE["measured"]}"/>'
                     f'<line x1="{sx(q(0.5)):.1f}" y1="{y + 2}" x2="{sx(q(0.5)):.1f}" y2="{y + 16}" '
                     f'stroke="{PALETTE["measured"]}" stroke-width="2"/>')
    axis_y = row_h * len(items) + 12
    for tick in (low, low + span / 2, high):
        parts.append(f'<text x="{sx(tick):.1f}" y="{axis_y + 10}" text-anchor="middle" class="tick">'
                     f'{tick:.3g} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


def roofline(data: dict | None, width: int = 560, height: int = 320) -> str:
    """The machine's roofline (peak compute, bandwidth slope) and where the fastest local run sits on it."""
    if not data or not data.get("peak_gflops") or not data.get("peak_bandwidth_gbs") or not data.get(
            "achieved_gflops") or not data.get("arithmetic_intensity"):
        return '<p class="muted">No roofline: peak figures or an achieved figure are missing.</p>'
    peak, bandwidth = data["peak_gflops"], data["peak_bandwidth_gbs"]
    intensity, achieved = data["arithmetic_intensity"], data["achieved_gflops"]
    ridge = peak / bandwidth
    xs = [min(intensity, ridge) / 10, max(intensity, ridge) * 10]
    ys = [min(achieved, xs[0] * bandwidth) / 2, peak * 2]
    x0, x1, y0, y1 = 70, width - 20, height - 45, 15
    sx, _ = _log_scale(xs, x0, x1)
    sy, _ = _log_scale(ys, y0, y1)
    roof = [(xs[0], xs[0] * bandwidth), (ridge, peak), (xs[1], peak)]
    points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in roof)
    return (f'<svg class="plot" viewBox="0 0 {width} {height}" role="img" aria-label="Roofline">'
            f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="{PALETTE["axis"]}"/>'
            f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="{PALETTE["axis"]}"/>'
            f'<polyline points="{points}" fill="none" stroke="{PALETTE["axis"]}" stroke-width="2"/>'
            f'<circle cx="{sx(intensity):.1f}" cy="{sy(achieved):.1f}" r="6" fill="{PALETTE["measured"]}"/>'
            f'<text x="{sx(intensity) + 10:.1f}" y="{sy(achieved) + 4:.1f}" class="tick">achieved '
            f'{achieved:.3g} GFLOP/s ({achieved / peak * 100:.1f}% of peak)</text>'
            f'<text x="{x1}" y="{sy(peak) - 6:.1f}" text-anchor="end" class="tick">peak {peak:g} GFLOP/s</text>'
            f'<text x="{(x0 + x1) / 2}" y="{height - 10}" text-anchor="middle" class="label">arithmetic intensity '
            f'(FLOP/byte, log)</text><text x="14" y="{(y0 + y1) / 2}" class="label" text-anchor="middle" '
            f'transform="rotate(-90 14 {(y0 + y1) / 2})">GFLOP/s (log)</text></svg>')
