"""The short Markdown summary posted as a pull-request comment: the verdict, the top five rows, what failed.

Every string from the report is escaped for Markdown (and for the HTML that Markdown renderers accept), so a model
whose names contain `<script>` or table syntax cannot inject markup or break the table.
"""

from __future__ import annotations

from reports import formatting as fmt
from reports.view import batch_basis, context, variants

TOP_ROWS = 5
MAX_PROBLEMS = 8
_SPECIAL = "\\`*_[]|~"


def md(value) -> str:
    """Escapes a value for Markdown text and table cells: HTML-significant characters become entities and
    Markdown syntax is backslash-escaped; newlines fold into spaces."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in text)


def _interval(row: dict) -> str:
    interval = row.get("latency_ms_interval")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return f"{fmt.ms(interval[0])}–{fmt.ms(interval[1])}"
    return fmt.DASH


def _batch(row: dict) -> str:
    """The batch a row is costed at, with its basis when fitted: `6 (interpolated)`."""
    basis = batch_basis(row)
    return f"{md(row.get('batch_size') or 1)}" + (f" ({basis['basis']})" if basis else "")


def _row_dict(value) -> dict | None:
    return value if isinstance(value, dict) else None


def summary_rows(rows: list[dict], recommendation: dict | None, top: int = TOP_ROWS) -> list[dict]:
    """The first `top` rows, plus the recommended row and every measured row wherever they rank."""
    keep = [r for index, r in enumerate(rows) if index < top or r.get("source") == "measured"
            or (recommendation is not None and r.get("instance") == recommendation.get("instance"))]
    return keep


def _variant_lines(report: dict) -> list[str]:
    """The reduced-precision variants: speed against accuracy (report.json precision_variants)."""
    view = variants(report)
    if view is None:
        return []
    calibration = ("synthetic inputs (no --calibration-data)" if view["calibration"] == "synthetic"
                   else md(view["calibration"]))
    lines = ["", f"**Precision variants** (static int8 calibrated on {calibration}):", "",
             f"| backend | precision | p50 ms | vs stock | max rel. error | {md(view['metric'] or 'eval metric')} | "
             "status |", "|---|---|--:|--:|--:|---|---|"]
    for row in view["rows"]:
        lines.append(f"| {md(row['backend'])}{' (stock)' if row['stock'] else ''} | {md(row['precision'])} | "
                     f"{row['p50']} | {row['ratio']} | {row['error']} | {md(row['metric'])} | {md(row['status'])} |")
    return lines


def render_markdown(report: dict) -> str:
    """A few lines for a pull-request comment, rendered from the report dict alone."""
    slo = report.get("slo") if isinstance(report.get("slo"), dict) else {}
    percentile = str(slo.get("percentile") or "p99")
    slo_text = f"{percentile} ≤ {fmt.number(slo.get('latency_ms'), 4)} ms"
    settings = report.get("settings") if isinstance(report.get("settings"), dict) else {}
    qps = settings.get("qps")
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    rec = _row_dict(report.get("recommendation"))
    lines: list[str] = []
    if rec and report.get("status", "recommended") != "no_slo_met":
        lines.append(f"### advisor: deploy on {md(rec.get('instance'))} with {md(rec.get('backend'))}")
        lines.append("")
        monthly = ""
        if fmt.is_number(rec.get("monthly_cost")) and fmt.is_number(qps):
            count = rec.get("instances_needed")
            monthly = (f" · **{fmt.money(rec['monthly_cost'])}/month** at {fmt.number(qps)} qps"
                       + (f" ({count} instance{'s' if count != 1 else ''})" if fmt.is_number(count) else ""))
        lines.append(f"**{percentile} {fmt.ms(rec.get('latency_ms'))} ms** [{_interval(rec)}] against the SLO of "
                     f"{fmt.number(slo.get('latency_ms'), 4)} ms ({md(rec.get('source', 'measured'))}) · "
                     f"**{fmt.money(rec.get('cost_per_million'))}** per million inferences{monthly} · "
                     f"{fmt.money(rec.get('price_per_hour'))}/h ({md(rec.get('provider', ''))} "
                     f"{md(rec.get('region', ''))})")
        lines.append("")
        if rec.get("why"):
            lines.append(f"Why: {md(str(rec['why']).rstrip('.'))}.")
        config = fmt.config_text(rec.get("config"), {"stock"})
        lines.append(f"Settings: {md(config)} · batch {_batch(rec)}")
        basis = batch_basis(rec)
        if basis:
            lines.append(f"Not measured: {md(basis['note'])}. Measure batch {md(basis['batch'])} before deploying "
                         "at it.")
    elif report.get("status") == "no_valid_candidate":
        lines.append("### advisor: no candidate could be measured")
        lines.append("")
        lines.append("**Every candidate failed to build, crashed, timed out or failed its numerical check**: there "
                     "is no latency to judge against the SLO. The reasons are listed below.")
    else:
        lines.append(f"### advisor: no instance meets the SLO ({md(slo_text)})")
        lines.append("")
        miss = _row_dict(report.get("closest_miss"))
        if miss and fmt.is_number(miss.get("latency_ms")) and fmt.is_number(slo.get("latency_ms")) and \
                slo["latency_ms"] > 0:
            lines.append(f"**No instance meets the SLO.** Closest: {md(miss.get('instance'))} with "
                         f"{md(miss.get('backend'))} at {fmt.ms(miss['latency_ms'])} ms [{_interval(miss)}], "
                         f"{miss['latency_ms'] / slo['latency_ms']:.2f}× the SLO "
                         f"({fmt.ms(miss['latency_ms'] - slo['latency_ms'])} ms too slow).")
        else:
            lines.append("**No instance meets the SLO.**")
    costmodel = _row_dict(report.get("costmodel")) or {}
    noisy = (_row_dict(costmodel.get("run_to_run")) or {}).get("note")
    if noisy:
        lines += ["", f"**Warning:** {md(noisy)}."]
    rows = summary_rows([r for r in report.get("ranking") or [] if isinstance(r, dict)], rec)
    if rows:
        lines += ["", f"| # | instance | backend | source | {percentile} ms | 95% interval | SLO | $/h | batch | "
                      "$/M inferences" + (" | $/month |" if fmt.is_number(qps) else " |"),
                  "|--:|---|---|---|--:|---|---|--:|--:|--:|" + ("--:|" if fmt.is_number(qps) else "")]
        for index, row in enumerate(rows, start=1):
            cells = [str(index), md(row.get("instance")), md(row.get("backend")), md(row.get("source")),
                     fmt.ms(row.get("latency_ms")), _interval(row),
                     md(row.get("slo_verdict") or ("meets" if row.get("meets_slo") else "misses")),
                     fmt.money(row.get("price_per_hour")), _batch(row), fmt.money(row.get("cost_per_million"))]
            if fmt.is_number(qps):
                cells.append(fmt.money(row.get("monthly_cost")))
            lines.append("| " + " | ".join(cells) + " |")
    lines += _variant_lines(report)
    problems = [f"{md(b.get('backend'))} unavailable on {md(b.get('target', '?'))}: {md(b.get('reason') or '?')}"
                for b in report.get("backends") or [] if isinstance(b, dict) and not b.get("available", True)]
    ctx = context(report)
    problems += [f"{md(t.get('backend'))} {md(t.get('status'))} ({md(ctx.varying(t))}): "
                 f"{md(t.get('reason') or 'no reason recorded')}"
                 for t in report.get("trials") or []
                 if isinstance(t, dict) and t.get("status") in ("failed", "rejected")]
    if problems:
        lines += ["", f"**Failed or unavailable ({len(problems)}):**"]
        lines += [f"- {p}" for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"- … and {len(problems) - MAX_PROBLEMS} more (see report.html)")
    started = fmt.when((report.get("environment") or {}).get("started_at"))
    lines += ["", (f"_Model {md(model.get('path', '?'))} (sha256 {md(str(model.get('sha256') or '?')[:12])}) · "
                   f"advisor {md(report.get('advisor_version', '?'))} · {md(started)} · full report: report.html_")]
    return "\n".join(lines) + "\n"
