"""The generative report's charts: report.json's fit_map and load_curve for the recommendation, the Pareto points,
the three inline-SVG charts and the Markdown tables, from real `advisor recommend` runs of Llama 3.1 8B on AWS.

The runs plan over three of the shipped AWS instances (copied into a test catalogue under their own names, so they
replace the bundled entries, in a region of their own that --region selects): the whole AWS list takes over a
minute to plan on two busy cores."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from markupsafe import Markup

from advisor.llm.report_data import default_contexts, pareto_points
from advisor.llm.summary import render_llm_markdown
from cli_helpers import invoke
from reports import formatting as fmt
from reports.plots import llm_charts
from reports.render import _asset, _environment, render_llm_html

ROOT = Path(__file__).resolve().parent.parent
LLAMA_8B = ROOT / "examples" / "llm" / "llama-3.1-8b"
AWS = ROOT / "hwprofiles" / "catalog" / "aws.yaml"
# the cheapest per token (8x H100), one L40S and four L40S (simulated once: the same device), and an A10G that
# misses the TTFT SLO unloaded (an exclusion)
SUBSET = ("p5.48xlarge", "g6e.xlarge", "g6e.12xlarge", "g5.xlarge")
REGION = "test-subset-1"
ARGS = ("--prompt-tokens", "2000", "--output-tokens", "300", "--qps", "4", "--provider", "aws", "--region", REGION)
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    data = yaml.safe_load(AWS.read_text())  # anchors resolved
    instances = [dict(i, region=REGION) for i in data["instances"] if i["name"] in SUBSET]
    assert sorted(i["name"] for i in instances) == sorted(SUBSET)
    path = tmp_path_factory.mktemp("catalog") / "aws-subset.yaml"
    path.write_text(yaml.safe_dump({"provider": "aws", "defaults": data.get("defaults", {}), "instances": instances}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, catalog) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("llm") / "run"
    result = invoke("recommend", LLAMA_8B, "--ttft", "800ms", "--itl", "60ms", *ARGS, "--catalog", catalog,
                    "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()), out


def render_with_charts(report: dict) -> str:
    """The page as render_llm_html renders it, given the charts (reports.plots.llm_charts) it does not pass yet."""
    return _environment().get_template("llm_report.html.j2").render(
        r=report, fmt=fmt, css=Markup(_asset("report.css")), charts=llm_charts(report),
        csp="default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'")


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


class Tags(HTMLParser):
    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.attributes = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value) for name, value in attrs]


def test_the_fit_map_holds_fewer_sequences_at_longer_contexts(run):
    report, _ = run
    rec, fit_map = report["recommendation"], report["fit_map"]
    contexts = [p["context"] for p in fit_map]
    assert contexts == [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]  # up to Llama 3.1's 128k context
    [planned] = [p for p in fit_map if p["configured"]]
    assert planned["context"] == report["workload"]["context"] == 4096
    assert planned["max_concurrent_sequences"] == rec["max_concurrent_sequences"]  # the plan's own memory fit
    sequences = [p["max_concurrent_sequences"] for p in fit_map]
    assert all(a > b for a, b in zip(sequences, sequences[1:])), sequences
    # doubling the context halves the sequences (the KV budget is fixed, KV per sequence is linear in the context)
    assert all(b <= a // 2 + 1 for a, b in zip(sequences, sequences[1:])), sequences
    assert all(p["max_concurrent_sequences_per_instance"] == p["max_concurrent_sequences"] * rec["replicas"]
               for p in fit_map)


def test_default_contexts_end_at_the_models_and_include_the_planned_one():
    assert default_contexts(32768, 6000) == [1024, 2048, 4096, 6000, 8192, 16384, 32768]
    assert default_contexts(40000, 4096) == [1024, 2048, 4096, 8192, 16384, 32768, 40000]
    assert default_contexts(512, 512) == [512]


def test_the_load_curve_rises_with_load_and_meets_the_slos_at_the_planned_rate(run):
    report, _ = run
    rec, curve, slo = report["recommendation"], report["load_curve"], report["slo"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    assert all(p["rate_rps"] == pytest.approx(p["fraction"] * rec["rate_rps"]) for p in curve)
    assert all(p["percentile"] == slo["percentile"] for p in curve)
    [planned] = [p for p in curve if p["fraction"] == 1.0]
    assert planned["meets_slo"] and planned["stable"] and planned["stable_pessimistic"]
    assert planned["ttft_ms_interval"][1] <= slo["ttft_ms"] and planned["itl_ms_interval"][1] <= slo["itl_ms"]
    # the planner's own run (same step model, seed and duration): its figures reproduce the recommendation's
    for name in ("ttft_ms", "itl_ms", "e2e_ms", "goodput_rps"):
        assert planned[name] == pytest.approx(rec[name]), name
    assert planned["ttft_ms_interval"] == pytest.approx(rec["ttft_ms_interval"])
    # the planned rate is the highest meeting the SLOs (to the bisection's 2 %): 1.5x misses
    assert not curve[-1]["meets_slo"]
    for metric in ("ttft_ms", "itl_ms"):
        for low, high in zip(curve, curve[1:]):
            upper = high[f"{metric}_interval"][1]  # null: unbounded
            assert upper is None or low[metric] <= upper, (metric, low, high)
        assert curve[0][metric] <= curve[-1][metric]
    goodputs = [p["goodput_rps"] for p in curve if p["meets_slo"]]
    assert goodputs == sorted(goodputs)


def test_pareto_points_agree_with_the_plans_frontier(run):
    report, _ = run
    points = pareto_points(report["ranking"])
    assert len(points) == len(report["ranking"]) >= 2
    assert {p["instance"] for p in points if p["on_frontier"]} == set(report["pareto"])
    for point, row in zip(points, report["ranking"]):  # both cheapest first
        assert point["instance"] == row["instance"]
        assert point["tokens_per_s_per_user"] == pytest.approx(1000 / row["itl_ms"])
        low, high = point["tokens_per_s_per_user_interval"]
        assert low <= point["tokens_per_s_per_user"] <= high


def test_the_page_has_three_inert_charts_with_captions_and_assumptions(run):
    report, _ = run
    page = render_with_charts(report)
    charts = svgs(page)
    assert len(charts) == 3
    assert "Concurrent sequences the KV cache holds" in charts[0] and "planned context 4k" in charts[0]
    assert "TTFT and ITL p99 against the arrival rate" in charts[1] and "SLO: p99 ≤ 800 ms" in charts[1]
    assert "SLO: p99 ≤ 60 ms" in charts[1] and "planned " in charts[1]
    assert "Pareto frontier" in charts[2] and f"recommended: {report['recommendation']['instance']}" in charts[2]
    for caption_start in ("Predicted by the memory model", "Predicted by the simulator", "Predicted for every"):
        assert caption_start in page
    assert 'id="assumptions"' in page
    for item in ("Lengths</b>: prompt 2,000 (fixed) tokens, output 300 (fixed)", "poisson arrivals",
                 "Duration</b>: each simulated run covers 10 min", "Efficiency</b>: roofline", "95% interval"):
        assert item in page, item
    assert page.count("<tr class=\"recommended\">") == 2  # the ranking's row and the load curve's planned rate
    tags = Tags(page)
    assert "script" not in tags.tags and not [a for a in tags.attributes if a[1].startswith("on")]
    assert "http://" not in page and "https://" not in page
    assert not [a for a in tags.attributes if a[1] in ("src", "href", "xlink:href")]


def test_the_written_page_has_the_charts(run):
    _, out = run
    assert len(svgs((out / "report.html").read_text())) == 3


def test_hostile_instance_names_are_escaped_in_the_charts(run):
    report = copy.deepcopy(run[0])
    report["ranking"][0]["instance"] = HOSTILE
    report["recommendation"]["instance"] = HOSTILE
    report["pareto"] = [HOSTILE] + report["pareto"]
    page = render_with_charts(report)
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in svgs(page)[2]
    assert render_llm_html(report).count(HOSTILE) == 0


def test_the_markdown_has_the_fit_map_and_load_curve_tables(run):
    report, out = run
    summary = (out / "summary.md").read_text()
    assert summary == render_llm_markdown(report)
    assert "| context | 1k | 2k | **4k** | 8k |" in summary
    assert f"| sequences | {report['fit_map'][0]['max_concurrent_sequences']:,} |" in summary
    rows = [line for line in summary.splitlines() if re.match(r"\| [0-9.]+x \|", line)]
    assert len(rows) == 6 and rows[3].startswith("| 1x |") and rows[3].endswith("| met |")
    assert rows[-1].endswith("| missed |")


def test_a_run_where_nothing_meets_the_slos_still_renders_without_curves(tmp_path, catalog):
    """A 1 ms ITL: no device decodes 8 B parameters that fast, so every candidate misses unloaded (no simulation)."""
    out = tmp_path / "run"
    result = invoke("recommend", LLAMA_8B, "--ttft", "800ms", "--itl", "1ms", *ARGS, "--catalog", catalog,
                    "--out", out)
    assert result.exit_code == 3, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "no_slo_met" and report["fit_map"] is None and report["load_curve"] is None
    page = render_with_charts(report)
    assert svgs(page) == [] and "No load curve" in page and "No fit map" in page and "No Pareto plot" in page
    assert 'id="assumptions"' in page and "nothing was recommended" in page
    summary = (out / "summary.md").read_text()
    assert "Latency against load" not in summary and "no instance meets" in summary
