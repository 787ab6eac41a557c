"""The HTML and Markdown reports from a real run's report.json: self-contained, escaped, and rendered in a real
headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import models
from advisor.cli import cli
from reports.render import render_html, render_markdown

HOSTILE = "<script>alert(1)</script>"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory) -> tuple[dict, Path]:
    """A real run on a model whose input, output and node names carry HTML/JS."""
    model = models.tiny_mlp()
    old_in, old_out = model.graph.input[0].name, model.graph.output[0].name
    for node in model.graph.node:
        node.name = f'{node.name}"><img src=x onerror=alert(2)>'
        node.input[:] = [HOSTILE if n == old_in else n for n in node.input]
        node.output[:] = [f"{HOSTILE}out" if n == old_out else n for n in node.output]
    model.graph.input[0].name = HOSTILE
    model.graph.output[0].name = f"{HOSTILE}out"
    folder = tmp_path_factory.mktemp("hostile")
    onnx.save(model, str(folder / "hostile.onnx"))
    out = folder / "run"
    result = CliRunner().invoke(cli, ["recommend", str(folder / "hostile.onnx"), "--slo", "50ms", "--out", str(out),
                                      "--backends", "onnxruntime", "--budget", "30s", "--min-time", "0.2s",
                                      "--batch-sizes", "1,2", "--quiet", "--qps", "300"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()), out


def test_names_are_escaped_everywhere(hostile_run):
    report, out = hostile_run
    html = (out / "report.html").read_text()
    assert HOSTILE not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 1  # only the table sorter
    markdown = (out / "summary.md").read_text()
    assert "<script>" not in markdown


def test_self_contained(hostile_run):
    _, out = hostile_run
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert "<svg" in html and 'id="recommended-instance"' in html


def test_content_sections(hostile_run):
    report, out = hostile_run
    html = (out / "report.html").read_text()
    for section in ("verdict", "price-plot", "ranking", "tuning", "distributions", "model", "failures",
                    "environment"):
        assert f'<section id="{section}">' in html
    assert report["recommendation"]["instance"] in html
    assert "per month at 300.0 qps" in html
    markdown = render_markdown(report)
    assert markdown.startswith("## advisor:") and "**Recommendation:" in markdown


def test_no_slo_met_variant(hostile_run):
    report, _ = hostile_run
    variant = {**report, "status": "no_slo_met", "recommendation": None,
               "closest_miss": report["ranking"][0], "slo": {**report["slo"], "latency_ms": 0.0001}}
    html = render_html(variant)
    assert "No instance meets the SLO" in html and "Closest:" in html
    assert "No instance meets the SLO" in render_markdown(variant)


def test_minimal_report_renders():
    minimal = {"schema": "advisor.report/v1", "status": "no_slo_met", "slo": {"latency_ms": 5.0, "percentile": "p99"},
               "model": {"path": "m.onnx", "inputs": [], "sha256": "0" * 64}, "settings": {}, "environment": {},
               "trials": [], "ranking": [], "recommendation": None}
    assert "No instance meets the SLO" in render_html(minimal)
    assert render_markdown(minimal)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_in_headless_chromium(hostile_run, tmp_path):
    _, out = hostile_run
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=3000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="recommended-instance"' in dom.stdout and "<svg" in dom.stdout
    console_errors = [line for line in dom.stderr.splitlines()
                      if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not console_errors, console_errors
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                           "--window-size=1280,2000", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 10_000
