"""report.json -> report.html (self-contained) and summary.md. Reads only the serialised report dict."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from advisor.runfolder import write_atomic
from reports import plots

TOP_DISTRIBUTIONS = 5


def _environment() -> Environment:
    # HTML templates autoescape everything; the Markdown one escapes table syntax with the `md` filter instead
    env = Environment(loader=PackageLoader("reports", "templates"),
                      autoescape=lambda name: name is None or not name.endswith(".md.j2"),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")
    env.filters["money"] = lambda v: f"${v:,.4g}" if _is_number(v) else "—"
    env.filters["ms"] = lambda v: f"{v:.3f}" if _is_number(v) else "—"
    env.filters["si"] = _si
    env.filters["config"] = lambda c: ", ".join(f"{k}={v}" for k, v in (c or {}).items() if k != "stock") or "—"
    return env


def _is_number(value) -> bool:
    """Optional report fields may be null or absent (Undefined in the template): both render as a dash."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _si(value, unit: str = "") -> str:
    if not _is_number(value):
        return "—"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


def _top_trials(report: dict) -> list[dict]:
    percentile = report["slo"]["percentile"]
    ok = [t for t in report.get("trials", []) if t.get("status") == "ok" and t.get("latency_ms")]
    ok.sort(key=lambda t: t["latency_ms"][percentile])
    return ok[:TOP_DISTRIBUTIONS]


def render_html(report: dict) -> str:
    percentile = report["slo"]["percentile"]
    trials = report.get("trials", [])
    by_backend: dict[str, list[dict]] = {}
    for trial in trials:
        by_backend.setdefault(trial["backend"], []).append(trial)
    model = report.get("model", {})
    context = {
        "r": report,
        "percentile": percentile,
        "by_backend": by_backend,
        "failed": [t for t in trials if t.get("status") in ("failed", "rejected")],
        "unavailable": [b for b in report.get("backends", []) if not b.get("available")],
        # plots are built from escaped strings in reports.plots, so they are marked safe here
        "plot_price": Markup(plots.latency_vs_price(report.get("ranking", []), report["slo"]["latency_ms"],
                                                    report.get("pareto", []), percentile)),
        "plot_flops": Markup(plots.bars(model.get("flops_by_class") or {}, "FLOP")),
        "plot_time": Markup(plots.bars(model.get("op_class_ms") or {}, "ms")) if model.get("op_class_ms") else None,
        "plot_distributions": Markup(plots.distributions(_top_trials(report), percentile)),
        "plot_roofline": Markup(plots.roofline(report.get("roofline"))),
    }
    return _environment().get_template("report.html.j2").render(**context)


def render_markdown(report: dict) -> str:
    return _environment().get_template("summary.md.j2").render(r=report, percentile=report["slo"]["percentile"],
                                                               failed=[t for t in report.get("trials", [])
                                                                       if t.get("status") in ("failed", "rejected")])


def write_reports(report: dict, folder: Path) -> dict[str, Path]:
    paths = {"html": folder / "report.html", "markdown": folder / "summary.md"}
    write_atomic(paths["html"], render_html(report))
    write_atomic(paths["markdown"], render_markdown(report))
    return paths
