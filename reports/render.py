"""report.json -> report.html (one self-contained page) and summary.md (a pull-request comment).

Reads only the serialised report dict (schema advisor.report/v1), never live objects, so a report can be
re-rendered from its JSON alone. HTML goes through jinja2 with autoescape on; the plots are inline SVG whose
strings are escaped as they are built (reports.svg); the page loads nothing from anywhere, which a
Content-Security-Policy in the page itself enforces.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from pathlib import Path

from jinja2 import ChainableUndefined, Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from advisor.runfolder import write_atomic
from reports import formatting as fmt
from reports import plots, view
from reports.markdown import render_markdown

__all__ = ["render_html", "render_llm_html", "render_markdown", "write_reports"]


@lru_cache(maxsize=1)
def _environment() -> Environment:
    # ChainableUndefined: a missing optional field (r.environment.gpus when environment is absent) renders empty
    # instead of raising, so partial reports still render
    env = Environment(loader=PackageLoader("reports", "templates"), undefined=ChainableUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html", "j2", "css", "js"),
                                                   default_for_string=True, default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=fmt.ms, money=fmt.money, si=fmt.si, number=fmt.number, percent=fmt.percent,
                       when=fmt.when, duration=fmt.duration)
    return env


def _asset(name: str) -> str:
    source, _, _ = _environment().loader.get_source(_environment(), name)
    return source


def _csp(script: str) -> str:
    """Nothing may load from anywhere; the one inline script runs only because its hash is listed, so markup
    injected through an unescaped string could not run a script either."""
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def render_html(report: dict) -> str:
    """The whole self-contained HTML page for a report dict."""
    script = _asset("report.js")
    context = view.build(report)
    return _environment().get_template("report.html.j2").render(
        **context, css=Markup(_asset("report.css")), script=Markup(script), csp=_csp(script))


def render_llm_html(report: dict) -> str:
    """The page of a generative run (`mode: generative`): verdict, ranked instances, exclusions, model and
    workload, charts (fit map, latency against load, Pareto). It runs no script at all."""
    return _environment().get_template("llm_report.html.j2").render(
        r=report, fmt=fmt, charts=plots.llm_charts(report), css=Markup(_asset("report.css")),
        csp="default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'; base-uri 'none'; "
            "form-action 'none'")


def write_reports(report: dict, folder: Path) -> dict[str, Path]:
    """Writes report.html and summary.md into `folder` (atomically) and returns their paths."""
    folder = Path(folder)
    paths = {"html": folder / "report.html", "markdown": folder / "summary.md"}
    write_atomic(paths["html"], render_html(report))
    write_atomic(paths["markdown"], render_markdown(report))
    return paths
