"""The stdout table and the Markdown summary of a generative run, read from the report dict alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

TOP_ROWS = 12
COLUMNS = ("#", "instance", "GPUs", "precision", "KV", "TP x replicas", "TTFT ms", "ITL ms", "req/s", "$/h",
           "$/M out tok", "source")


def _money(value) -> str:
    return "-" if value is None else f"${value:,.4g}"


def _slo_text(slo: dict) -> str:
    parts = [f"TTFT <= {slo['ttft_ms']:g} ms" if slo.get("ttft_ms") else None,
             f"ITL <= {slo['itl_ms']:g} ms" if slo.get("itl_ms") else None]
    return f"{slo['percentile']} " + ", ".join(p for p in parts if p)


def _cells(index: int, row: dict) -> list[str]:
    return [str(index), row["instance"], f"{row['devices']}x {row['device']}", row["precision"],
            row["kv_cache_dtype"], f"{row['tensor_parallel']} x {row['replicas']}",
            f"{row['ttft_ms']:.0f} [{row['ttft_ms_interval'][0]:.0f}-{row['ttft_ms_interval'][1]:.0f}]",
            f"{row['itl_ms']:.1f} [{row['itl_ms_interval'][0]:.1f}-{row['itl_ms_interval'][1]:.1f}]",
            f"{row['goodput_rps']:.3g}", _money(row["price_per_hour"]),
            _money(row["cost_per_million_output_tokens"]), row["source"]]


def print_llm_summary(report: dict, run_dir: Path, console: Console | None = None) -> None:
    console = console or Console(highlight=False, width=max(shutil.get_terminal_size((150, 40)).columns, 150))
    slo = report["slo"]
    table = Table(title=f"Instances by cost per million output tokens ({_slo_text(slo)}; "
                        f"{report['model']['llm'].get('name', '')} at context {report['workload']['context']})")
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("#", "GPUs", "req/s", "$/h", "$/M out tok") else "left")
    for index, row in enumerate(report["ranking"][:TOP_ROWS], start=1):
        table.add_row(*_cells(index, row))
    console.print(table)
    rec = report.get("recommendation")
    if rec:
        console.print(f"Recommendation: {rec['instance']} ({rec['devices']}x {rec['device']}) — {rec['why']}")
        if rec.get("artifact"):
            what = "an ONNX Runtime GenAI engine: python -m advisor.runtime ARTIFACT --serve" \
                if rec.get("engine") == "onnxruntime-genai" else "launch.sh, k8s.yaml, bench.sh"
            console.print(f"Artifact: {rec['artifact']} ({what})")
        elif rec.get("artifact_error"):
            console.print(f"Artifact not written: {rec['artifact_error']}")
    else:
        miss = report.get("closest_miss")
        if miss:
            detail = (f"; closest: {miss['instance']} ({miss['precision']}, TP {miss['tensor_parallel']}) needs "
                      f"{miss['needed_gib_per_device']:g} GiB per device for one sequence, "
                      f"{miss['need_over_usable']:.2f}x the {miss['usable_gib_per_device']:g} GiB it can use")
        else:
            first = next(iter(report.get("excluded") or []), None)
            detail = f"; e.g. {first['instance']}: {first['reason']}" if first else ""
        console.print(f"No instance meets the SLOs{detail}")
    for line in local_measurement_lines(report.get("local_measurements")):
        console.print(line)
    console.print(f"Report: {run_dir / 'report.html'}  JSON: {run_dir / 'report.json'}")


def local_measurement_lines(local: dict | None) -> list[str]:
    """One line per candidate measured on this machine (advisor.llm.local_candidates), or why none was."""
    if not local:
        return []
    if local.get("skipped_because"):
        return [f"Measured here: nothing ({local['skipped_because']})"]
    lines = []
    for c in local.get("candidates", []):
        if c["status"] != "ok":
            lines.append(f"Measured here: {c['precision']} ({c['engine']}) failed: {c['reason']}")
            continue
        ttft, itl = c["ttft_ms"], c["itl_ms"]
        lines.append(f"Measured here: {c['precision']} ({c['engine']}, one sequence at a time): TTFT p50 "
                     f"{ttft['p50']:.3g} ms [{ttft['interval_p50'][0]:.3g}-{ttft['interval_p50'][1]:.3g}], "
                     f"inter-token p50 {itl['p50']:.3g} ms [{itl['interval_p50'][0]:.3g}-{itl['interval_p50'][1]:.3g}]"
                     f", +{c['peak_memory_mib']:.0f} MiB; reference check passed ({c['reference_check']['rule']})")
    return lines


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_llm_markdown(report: dict) -> str:
    slo = report["slo"]
    llm = report["model"]["llm"]
    rec = report.get("recommendation")
    lines = []
    if rec:
        lines += [f"### advisor: serve {_md(llm.get('name', 'the model'))} on {_md(rec['instance'])} "
                  f"({rec['devices']}x {_md(rec['device'])})", "",
                  f"{_md(rec['why'])}.", "",
                  f"Predicted at {rec['rate_rps']:.3g} requests/s per replica ({_md(rec['source'])}: "
                  f"{_md(rec['efficiency_source'])}): TTFT {slo['percentile']} **{rec['ttft_ms']:.0f} ms** "
                  f"[{rec['ttft_ms_interval'][0]:.0f}–{rec['ttft_ms_interval'][1]:.0f}], ITL **{rec['itl_ms']:.1f} "
                  f"ms** [{rec['itl_ms_interval'][0]:.1f}–{rec['itl_ms_interval'][1]:.1f}] against "
                  f"{_md(_slo_text(slo))}."]
        if rec.get("instances_needed"):
            lines += ["", f"**{rec['instances_needed']} instance(s)**, ${rec['monthly_cost']:,.0f}/month at "
                          f"{report['settings']['qps']:g} requests/s."]
    else:
        lines += [f"### advisor: no instance meets {_md(_slo_text(slo))} for {_md(llm.get('name', 'the model'))}"]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_md(c) for c in _cells(i, r)) + " |"
              for i, r in enumerate(report["ranking"][:TOP_ROWS], start=1)]
    lines += _fit_map_lines(report.get("fit_map")) + _load_curve_lines(report.get("load_curve"), slo)
    measured = local_measurement_lines(report.get("local_measurements"))
    if measured:
        lines += [""] + [f"- {_md(line)}" for line in measured]
    excluded = report.get("excluded") or []
    if excluded:
        lines += ["", f"**Excluded ({len(excluded)}):** " + "; ".join(
            f"{_md(e['instance'])}: {_md(e['reason'])}" for e in excluded[:8]) + ("; …" if len(excluded) > 8 else "")]
    return "\n".join(lines) + "\n"


def _context(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens >= 1024 and tokens % 1024 == 0 else f"{tokens:,}"


def _fit_map_lines(fit_map: list[dict] | None) -> list[str]:
    """One row: the sequences per replica the recommendation's KV cache holds at each context length."""
    if not fit_map:
        return []
    cells = [f"**{_context(p['context'])}**" if p.get("configured") else _context(p["context"]) for p in fit_map]
    return ["", "Concurrent sequences per replica by context length (memory model; planned context in bold):", "",
            "| context | " + " | ".join(cells) + " |", "|---|" + "---|" * len(fit_map),
            "| sequences | " + " | ".join(f"{p['max_concurrent_sequences']:,}" for p in fit_map) + " |"]


def _interval(value, pair, digits: int) -> str:
    if value is None:
        return "-"
    low, high = (pair or [None, None])[:2]
    high_text = "unbounded" if high is None else f"{high:.{digits}f}"
    low_text = "-" if low is None else f"{low:.{digits}f}"
    return f"{value:.{digits}f} [{low_text}-{high_text}]"


def _load_curve_lines(curve: list[dict] | None, slo: dict) -> list[str]:
    """The recommendation simulated at fractions of its planned rate, intervals in brackets."""
    if not curve:
        return []
    p = slo["percentile"]
    lines = ["", f"Latency against load at the recommendation (simulated; {p} with 95% intervals):", "",
             f"| load | req/s per replica | TTFT {p} ms | ITL {p} ms | goodput req/s per instance | SLOs |",
             "|---|---|---|---|---|---|"]
    for point in curve:
        verdict = "met" if point["meets_slo"] else "missed"
        lines.append(f"| {point['fraction']:g}x | {point['rate_rps']:.3g} | "
                     f"{_interval(point['ttft_ms'], point['ttft_ms_interval'], 0)} | "
                     f"{_interval(point['itl_ms'], point['itl_ms_interval'], 1)} | {point['goodput_rps']:.3g} | "
                     f"{verdict} |")
    return lines
