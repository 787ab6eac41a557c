"""The ranked summary a run prints on stdout, read from the report dict like every other rendering."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

TOP_ROWS = 12


def _money(value) -> str:
    return "-" if value is None else f"${value:,.4g}"


def print_summary(report: dict, run_dir: Path, console: Console | None = None) -> None:
    # a pipe or a CI log is not a terminal: rich would squeeze the table to 80 columns
    console = console or Console(highlight=False, width=max(shutil.get_terminal_size((150, 40)).columns, 150))
    slo = report["slo"]
    table = Table(title=f"Instances by cost per million inferences (SLO {slo['percentile']} <= "
                        f"{slo['latency_ms']:g} ms)")
    for column in ("#", "instance", "backend", "source", f"{slo['percentile']} ms", "interval", "SLO", "$/h",
                   "$/M inf"):
        table.add_column(column, justify="right" if column in ("#", "$/h", "$/M inf") else "left")
    from reports.markdown import summary_rows

    for index, row in enumerate(summary_rows(report["ranking"], report.get("recommendation"), TOP_ROWS), start=1):
        low, high = row["latency_ms_interval"]
        table.add_row(str(index), row["instance"], row["backend"], row["source"], f"{row['latency_ms']:.3f}",
                      f"{low:.3f}-{high:.3f}", row.get("slo_verdict", "meets" if row["meets_slo"] else "misses"),
                      _money(row.get("price_per_hour")), _money(row.get("cost_per_million")))
    console.print(table)
    noisy = ((report.get("costmodel") or {}).get("run_to_run") or {}).get("note")
    if noisy:
        console.print(f"Warning: {noisy}")
    recommendation = report.get("recommendation")
    if recommendation:
        console.print(f"Recommendation: {recommendation['instance']} with {recommendation['backend']} "
                      f"({slo['percentile']} {recommendation['latency_ms']:.3f} ms, "
                      f"{_money(recommendation.get('cost_per_million'))} per million inferences)")
        if recommendation.get("artifact"):
            console.print(f"Artifact: {recommendation['artifact']}")
    elif report.get("status") == "no_valid_candidate":
        console.print("No candidate could be measured: every one failed to build, crashed, timed out or failed its "
                      "numerical check (see the report's trials)")
    else:
        miss = report.get("closest_miss")
        detail = (f"; closest: {miss['instance']} at {miss['latency_ms']:.3f} ms "
                  f"({miss['latency_ms'] / slo['latency_ms']:.2f}x the SLO)") if miss else ""
        console.print(f"No instance meets the SLO{detail}")
    console.print(f"Report: {run_dir / 'report.html'}  JSON: {run_dir / 'report.json'}")
