"""The HTML report and Markdown summary, rendered from a realistic report.json (tests/fixtures/report_sample.json),
from hostile and partial variants of it, and from a real run: escaping everywhere (SVG included), no remote
resources, every section present, robustness to missing optional fields, the no-SLO-met variant."""

from __future__ import annotations

import base64
import copy
import hashlib
import html as htmllib
import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from markupsafe import escape

import models
from reports import formatting as fmt
from reports.markdown import md
from reports.render import render_html, render_markdown, write_reports
from reports.svg import Scale, Svg, auto_scale, tick_label
from reports.view import tuning_summary

FIXTURE = Path(__file__).parent / "fixtures" / "report_sample.json"
# a real `advisor recommend examples/tiny_cnn.onnx --slo 20ms --budget 60s` report: latency-vs-batch fits, rows at
# extrapolated batch sizes, TVM trials with MetaSchedule's tuning details
REAL = Path(__file__).parent / "fixtures" / "report_tvm_batch_fits.json"
HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PAYLOAD = "\"'><img src=x onerror=alert(2)><script>alert(3)</script>|`*_&amp;"
SECTIONS = ("verdict", "price", "ranking", "sizing", "tuning", "distributions", "model", "roofline", "failures",
            "environment")
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "header", "nav", "main", "section", "footer", "div",
                "span", "h1", "h2", "h3", "p", "a", "strong", "small", "b", "code", "dl", "dt", "dd", "ul", "li",
                "table", "thead", "tbody", "tr", "th", "td", "figure", "figcaption", "script", "svg", "g", "rect",
                "line", "circle", "text", "polyline", "polygon", "path"}


@pytest.fixture(scope="module")
def sample() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def html(sample) -> str:
    return render_html(sample)


class Census(HTMLParser):
    """Every start tag and attribute of a page, as a browser's tokenizer would see them."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: Counter = Counter()
        self.attributes: list[tuple[str, str, str | None]] = []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.attributes += [(tag, name, value) for name, value in attrs]


def assert_inert(page: str) -> None:
    """Nothing in the page can run or load anything but our one script."""
    census = Census(page)
    assert census.tags["script"] == 1, census.tags
    assert set(census.tags) <= ALLOWED_TAGS, set(census.tags) - ALLOWED_TAGS
    assert not [a for a in census.attributes if a[1].startswith("on")]
    assert not [a for a in census.attributes if a[1] in ("src", "srcset", "action", "formaction", "xlink:href")]
    assert all(value.startswith("#") for _, name, value in census.attributes if name == "href")


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)


@pytest.fixture(scope="module")
def real() -> dict:
    return json.loads(REAL.read_text())


def fitted_variant(report: dict) -> dict:
    """The sample with its winner's latency-vs-batch fit (fitted by advisor/sizing.py on the winner's measured batch
    sizes) and sized at batch 3, between measured sizes, under an SLO of 60 ms; a third row at an extrapolated 16."""
    from advisor.sizing import BatchCurve, BatchPoint

    variant = copy.deepcopy(report)
    rec = variant["recommendation"]
    points = [BatchPoint(t["batch_size"], t["latency_ms"]["p99"], tuple(t["latency_ms"]["intervals"]["p99"]),
                         t["latency_ms"]["mean"]) for t in variant["trials"]
              if t["backend"] == rec["backend"] and t["config"] == rec["config"] and t["phase"] in ("confirm", "sweep")]
    curve = BatchCurve.fit(points)
    variant["costmodel"]["batch_fits"] = [{"backend": rec["backend"], "target": rec["target"], "config": rec["config"],
                                           "percentile": "p99", **curve.to_dict()}]
    variant["slo"]["latency_ms"] = 60.0
    for row in (rec, variant["ranking"][0]):
        row.update(batch_size=3, batch_basis="interpolated", batch_fit=FIT_LINE, notes=[*row["notes"], FITTED_NOTE])
    variant["ranking"][2].update(batch_size=16, batch_basis="extrapolated", batch_fit=f"{FIT_LINE}{CAP}",
                                 notes=[*variant["ranking"][2]["notes"], EXTRAPOLATED_NOTE])
    return variant


FIT_LINE = "latency 2.78 + 11.7 ms x batch, fitted on batches 1, 2, 4, 8 (R² 0.995)"
FITTED_NOTE = f"batch 3 interpolated: {FIT_LINE}"
CAP = " (cap 16: 2x the largest measured)"
EXTRAPOLATED_NOTE = f"batch 16 extrapolated: {FIT_LINE}{CAP}"


def no_slo_variant(report: dict) -> dict:
    variant = copy.deepcopy(report)
    variant["slo"]["latency_ms"] = 0.5
    for row in variant["ranking"]:
        row.update(slo_verdict="misses", meets_slo=False, slo_margin_ms=0.5 - row["latency_ms"])
    variant["status"], variant["recommendation"] = "no_slo_met", None
    variant["closest_miss"] = min(variant["ranking"], key=lambda r: r["latency_ms"])
    return variant


# ---- escaping and self-containment -------------------------------------------------------------------------


def test_hostile_input_name_is_escaped_in_tables_and_svg(sample, html):
    assert HOSTILE in json.dumps(sample)  # the fixture carries it: an input name, an operator, a failure reason
    assert HOSTILE not in html
    assert html.count(ESCAPED) >= 3
    operator_mix = next(s for s in svgs(html) if "Operator mix" in s)
    assert ESCAPED in operator_mix and HOSTILE not in operator_mix
    assert_inert(html)


FREE_TEXT_KEYS = {"config", "op_histogram", "flops_by_class", "bytes_by_class", "op_class_ms", "uncounted_ops",
                  "packages", "versions"}
ENUM_KEYS = {"status", "source", "phase", "slo_verdict", "schema", "percentile", "started_at", "finished_at",
             "batch_basis"}


def poison(value, key: str | None = None):
    """Every free-text string (names, reasons, paths, config keys and values) with markup appended."""
    if isinstance(value, dict):
        rename = key in FREE_TEXT_KEYS
        return {(k + PAYLOAD if rename else k): poison(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [poison(v, key) for v in value]
    if isinstance(value, str) and key not in ENUM_KEYS:
        return value + PAYLOAD
    return value


@pytest.mark.parametrize("variant", ["recommended", "no_slo_met", "fitted", "real"])
def test_every_report_string_is_escaped(sample, real, variant):
    report = poison({"recommended": lambda: sample, "no_slo_met": lambda: no_slo_variant(sample),
                     "fitted": lambda: fitted_variant(sample), "real": lambda: real}[variant]())
    page = render_html(report)
    assert "<img" not in page and "alert(3)</script>" not in page and "onerror=alert" not in page.replace(
        "onerror=alert(2)&gt;", "")
    assert_inert(page)
    # model-derived strings reach SVG text and tooltips: the price plot (instance names), operator mix, progress
    plots = svgs(page)
    assert len(plots) >= 6
    assert sum("&lt;script&gt;alert(3)&lt;/script&gt;" in p for p in plots) >= 4
    markdown = render_markdown(report)
    assert "<" not in markdown.replace("&lt;", "")
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    cells = {len(re.split(r"(?<!\\)\|", line)) for line in table}
    assert len(cells) == 1, table  # escaped pipes in names do not add columns


def test_self_contained(html):
    remote = r"""\b(src|href|xlink:href|action)\s*=\s*["']?\s*(https?:|//|data:|file:)"""
    assert not re.search(remote, html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html
    assert_inert(html)


def test_content_security_policy_allows_only_the_inline_script(html):
    policy = htmllib.unescape(re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)"',
                                        html).group(1))
    assert "default-src 'none'" in policy and "unsafe-inline'; img-src" in policy
    script = re.search(r"<script>(.*?)</script>", html, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy


# ---- content ----------------------------------------------------------------------------------------------------


def test_sections_in_order_with_the_verdict_first(sample, html):
    positions = [html.index(f'id="{name}"') for name in SECTIONS]
    assert positions == sorted(positions)
    rec = sample["recommendation"]
    verdict = html[positions[0]:positions[1]]
    assert f'<span id="recommended-instance">{rec["instance"]}</span> with {rec["backend"]}' in verdict
    assert "14.7 <small>ms</small>" in verdict and "SLO 25 ms" in verdict  # latency at the SLO percentile vs SLO
    assert "$0.236" in verdict and "$223" in verdict and "at 200 qps" in verdict and "4 instances" in verdict
    assert "Why: 4% cheaper per million inferences than c6i.large" in verdict
    assert rec["runner_up"]["instance"] in verdict and "runner-up" in verdict
    assert "graph_optimization</b>=extended" in verdict and "intra_op_threads</b>=2" in verdict
    assert rec["artifact"] in verdict


def test_price_plot_marks_measured_estimated_slo_and_pareto(sample, html):
    plot = html[html.index('id="price-plot"'):html.index('id="ranking"')]
    rows = sample["ranking"]
    measured = sum(r["source"] == "measured" for r in rows)
    assert plot.count('r="6" fill="#2563eb" stroke="#ffffff"') == measured  # filled
    assert plot.count('r="5" fill="#ffffff" stroke="#2563eb"') == len(rows) - measured  # hollow
    assert 'stroke="#dc2626" stroke-width="1.6" stroke-dasharray="7 4"' in plot  # SLO line
    assert "SLO: p99 ≤ 25 ms" in plot
    assert 'stroke="#16a34a" stroke-width="2"' in plot  # Pareto frontier
    assert "price per hour (USD, log scale)" in plot and "p99 latency (ms, log scale)" in plot
    for label in ("measured", "estimated (bar: 95% interval)", "Pareto frontier", "★ c6a.large"):
        assert label in plot
    assert plot.count("<title>") >= len(rows)  # a tooltip per point, readable without JavaScript


def test_ranked_table_is_complete_and_sortable(sample, html):
    table = html[html.index('id="ranking-table"'):html.index("</table>", html.index('id="ranking-table"'))]
    names = re.findall(r'<tr class="main">\s*<td class="num" data-value="\d+">\d+</td>\s*<td data-value="([^"]+)">',
                       table)
    assert names == [r["instance"] for r in sample["ranking"]]
    assert table.count('class="badge b-measured"') == sum(r["source"] == "measured" for r in sample["ranking"])
    verdicts = Counter(r["slo_verdict"] for r in sample["ranking"])
    for verdict, count in verdicts.items():
        assert table.count(f'<span class="badge b-{verdict}">') == count
    assert table.count('data-sort="num"') >= 5 and 'class="sortable"' in html[html.index('id="ranking"'):]
    assert "13.1–15.3" in table  # the interval
    assert "not recommendable" in table


def test_tuning_section_shows_each_backend_progress_and_failures(sample, html):
    tuning = html[html.index('id="tuning"'):html.index('id="distributions"')]
    for backend in ("onnxruntime", "tvm", "tensorrt"):
        assert f"</span>{backend}</h3>" in tuning
    assert "Tuning progress: latency estimated from the best kernels found, against trials used" in tuning
    assert "160 trials on 10 of 14 tasks in 10 min 3 s; final estimate" in tuning  # the progress plot's caption
    assert "untuned (p50): 1,238 ms" in tuning or "untuned (p50): 1,24" in tuning
    assert "best onnxruntime (p50)" in tuning
    assert "LocalBuilder: Timeout, killed after 30.0 seconds" in tuning
    assert "TensorRT needs an NVIDIA GPU" in tuning
    assert "stock settings" in tuning and "graph_optimization=extended, intra_op_threads=2" in tuning
    trials = len(sample["trials"])
    assert tuning.count('<td class="config"') == trials


def test_distributions_model_roofline_failures_environment(sample, html):
    distributions = html[html.index('id="distributions"'):html.index('id="model"')]
    # the five fastest (stock among them) and TVM's best
    assert len(re.findall(r"\d+ runs · (?:confirm|search|sweep)<", distributions)) == 6
    assert "tvm · tuning=meta_schedule, max_trials=160" in distributions
    assert "stock settings" in distributions
    model = html[html.index('id="model"'):html.index('id="roofline"')]
    assert "1.43 GFLOP" in model and "17.4 M" in model and "matmul operators take 68% of the profiled time" in model
    assert "share of measured time" in model and "Operator mix" in model
    roofline = html[html.index('id="roofline"'):html.index('id="failures"')]
    assert "peak 224 GFLOP/s" in roofline and "12.8 GB/s memory bandwidth" in roofline
    assert "whole model:" in roofline and "memory-bound" in roofline
    failures = html[html.index('id="failures"'):html.index('id="environment"')]
    assert "tensorrt</strong> on cpu" in failures
    assert failures.count('<span class="badge b-failed">') == 3
    assert failures.count('<span class="badge b-rejected">') == 1 and "0.0831 &gt; tolerance 0.05" in failures
    environment = html[html.index('id="environment"'):]
    for text in ("3.11.7", "AMD EPYC 7R13", "onnxruntime 1.31.1", "2026-11-22 09:14 UTC", "15 min 38 s",
                 sample["model"]["sha256"]):
        assert text in environment


def test_no_slo_met_says_so_and_how_far(sample):
    variant = no_slo_variant(sample)
    page = render_html(variant)
    closest = variant["closest_miss"]
    assert 'class="verdict bad"' in page and "No instance meets the SLO of p99 ≤ 0.5 ms" in page
    assert f'<strong id="closest-instance">{closest["instance"]}</strong>' in page
    assert f'{fmt.number(closest["latency_ms"] / 0.5)}×</strong> the SLO' in page
    assert "recommended-instance" not in page
    assert f"closest: {closest['instance']}" in page  # labelled in the plot
    summary = render_markdown(variant)
    assert summary.startswith("### advisor: no instance meets the SLO (p99 ≤ 0.5 ms)")
    assert f"Closest: {md(closest['instance'])}" in summary and "× the SLO" in summary
    assert_inert(page)


def test_markdown_summary(sample):
    summary = render_markdown(sample)
    lines = summary.splitlines()
    assert lines[0] == "### advisor: deploy on c6a.large with onnxruntime"
    assert "**p99 14.7 ms** [13.1–15.3] against the SLO of 25 ms" in summary
    assert "**$0.236** per million inferences" in summary and "**$223/month** at 200 qps (4 instances)" in summary
    table = [line for line in lines if line.startswith("| ")]
    # the top 5, then every measured row ranked below them (a reviewer always sees what was really measured)
    measured_below = [r for r in sample["ranking"][5:] if r["source"] == "measured"]
    assert measured_below, "the sample must have a measured row below the top 5 for this test to mean anything"
    assert [row.split(" | ")[1] for row in table[1:]] == [md(r["instance"]) for r in
                                                          sample["ranking"][:5] + measured_below]
    assert "**Failed or unavailable (5):**" in summary and "tensorrt unavailable on cpu" in summary
    assert "&lt;script&gt;" in summary and HOSTILE not in summary


# ---- batch sizing and tuning details --------------------------------------------------------------------------


def _section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}"')
    return page[start:page.index("</section>", start)]


def _ranking_table(page: str) -> str:
    start = page.index('id="ranking-table"')
    return page[start:page.index("</table>", start)]


def test_an_older_report_renders_without_batch_bases_or_fits(sample, html):
    assert "batch_basis" not in json.dumps(sample["ranking"]) and "batch_fits" not in sample["costmodel"]
    table = _ranking_table(html)
    assert "b-interpolated" not in table and "b-extrapolated" not in table
    assert 'id="fitted-batch"' not in html
    sizing = _section(html, "sizing")
    assert "No latency-vs-batch fit" in sizing and "predates the fits" in sizing and "<svg" not in sizing
    assert "· batch 1 ·" not in render_markdown(sample) and "| 1 | $0.236 |" in render_markdown(sample)


def test_a_fitted_batch_is_tagged_in_the_verdict_the_ranking_and_the_summary(sample):
    page = render_html(fitted_variant(sample))
    assert_inert(page)
    verdict = _section(page, "verdict")
    tag = f'<span class="badge b-interpolated" title="{FITTED_NOTE}">interpolated</span>'
    assert f"at batch 3 {tag}" in verdict  # the per-million figure is at a batch that was never run
    assert '<span class="chip"><b>batch</b>=3</span>' + tag in verdict
    callout = verdict[verdict.index('id="fitted-batch"'):]
    callout = callout[:callout.index("</p>")]
    assert "<strong>Batch 3 was never measured.</strong>" in callout
    assert f"interpolated from the latency-vs-batch fit: {FIT_LINE}. The p99 latency above is at batch 1." in callout
    assert verdict.index('class="kpis"') < verdict.index('id="fitted-batch"') < verdict.index('class="details"')
    table = _ranking_table(page)
    assert table.count('class="badge b-interpolated"') == 1 and table.count('class="badge b-extrapolated"') == 1
    assert f'<div><span class="badge b-extrapolated" title="{EXTRAPOLATED_NOTE}">extrapolated</span></div>' in table
    assert f"; {FITTED_NOTE}</td></tr>" in table  # and in the row's notes line
    assert table.count('data-value="3">3<div>') == 1 and table.count('data-value="16">16<div>') == 1
    summary = render_markdown(fitted_variant(sample))
    assert "· batch 3 (interpolated)\n" in summary
    assert f"Not measured: {md(FITTED_NOTE)}. Measure batch 3 before deploying at it." in summary
    rows = [line for line in summary.splitlines() if line.startswith("| ")]
    assert "| $0.0765 | 3 (interpolated) | $0.236 |" in rows[1] and "| 16 (extrapolated) |" in rows[3]
    assert "| 1 | $0.245 |" in rows[2]


def test_the_batch_fits_table_and_plot(sample):
    report = fitted_variant(sample)
    sizing = _section(render_html(report), "sizing")
    fit = report["costmodel"]["batch_fits"][0]
    table = sizing[sizing.index('id="batch-fits"'):]
    assert table.count('<tr class="recommended">') == 1  # the recommended candidate's row, the one plotted
    assert "graph_optimization=extended, intra_op_threads=2" in table and "on cpu" in table
    assert '<td class="num">1, 2, 4, 8</td>' in table
    assert "2.78 + 11.7 ms × batch" in table and "R² 0.995 · residual band ×0.966–×1.05" in table
    assert "2.00 + 8.99 ms × batch" in table and "R² 0.998" in table  # the mean line, for throughput
    assert f"latency ×{fmt.number(fit['extrapolation_check']['latency_ratio'], 3)}, mean ×1.06" in table
    assert "16 (extrapolated beyond 8)" in table
    plot = svgs(sizing)[0]
    assert "p99 latency against batch size: onnxruntime · graph_optimization=extended" in plot
    assert plot.count('r="5.5" fill="#2563eb" stroke="#ffffff"') == 4  # the measured sizes, filled
    assert plot.count('r="5.5" fill="#ffffff" stroke="#2563eb"') == 1  # the sized batch, hollow: never run
    assert "batch 3, interpolated (never measured): p99 37.9 ms" in plot
    assert "batch 8, measured (sweep): p99 101 ms [84.0–102]" in plot
    assert "batch 1, measured (confirm): p99 14.7 ms" in plot  # side-by-side figures first, as the ranking does
    assert "c6a.large: sized at batch 3 (interpolated)" in plot
    assert "extrapolated (≤ 2× the largest measured)" in plot and 'stroke-dasharray="7 5"' in plot
    assert "SLO: p99 ≤ 60 ms" in plot and "<polygon" in plot  # the fitted figures' interval as a band
    # a fit through two sizes: no extrapolation, and the plot stops at the largest measured size
    short = copy.deepcopy(report)
    short["costmodel"]["batch_fits"][0].update(measured_batch_sizes=[1, 2], extrapolation_check=None,
                                               max_batch_size=2)
    sizing = _section(render_html(short), "sizing")
    assert "none (fewer than 3 measured sizes)" in sizing and "2 (no extrapolation)" in sizing
    assert "extrapolated (≤" not in sizing and "<svg" in sizing


def test_a_hostile_config_in_a_batch_fit_is_escaped(sample):
    report = fitted_variant(sample)
    fit = report["costmodel"]["batch_fits"][0]
    fit["config"] = {**fit["config"], f"key{PAYLOAD}": f"value{PAYLOAD}"}
    report["recommendation"]["config"] = dict(fit["config"])  # still the recommended candidate: it is plotted
    fit["backend"] = report["recommendation"]["backend"] = f"onnxruntime{PAYLOAD}"
    page = render_html(report)
    assert_inert(page)
    sizing = _section(page, "sizing")
    assert "<img" not in sizing and "alert(3)</script>" not in sizing
    text = f"key{PAYLOAD}=value{PAYLOAD}"
    table, plot = sizing[sizing.index('id="batch-fits"'):], svgs(sizing)[0]
    assert str(escape(text)) in table  # jinja2's autoescape
    assert htmllib.escape(text, quote=True) in plot  # reports/svg.py: the plot's label and tooltips
    assert plot.count(htmllib.escape(f"onnxruntime{PAYLOAD}", quote=True)) >= 2


def test_batch_fits_with_any_field_missing_or_odd(sample):
    report = fitted_variant(sample)
    fit = report["costmodel"]["batch_fits"][0]
    for key in fit:
        for how in ("missing", "null"):
            partial = copy.deepcopy(report)
            entry = partial["costmodel"]["batch_fits"][0]
            if how == "missing":
                del entry[key]
            else:
                entry[key] = None
            assert 'id="batch-fits"' in _section(render_html(partial), "sizing"), (key, how)
    for line in ("latency", "mean"):
        for key in fit[line]:
            partial = copy.deepcopy(report)
            partial["costmodel"]["batch_fits"][0][line][key] = "n/a"
            render_html(partial)
    for odd in ("not a list", [None, "x"], [{}], None):
        partial = copy.deepcopy(report)
        partial["costmodel"]["batch_fits"] = odd
        sizing = _section(render_html(partial), "sizing")
        assert ('id="batch-fits"' in sizing) == (odd == [{}])
    for basis in (None, "measured", "guessed", 3):
        partial = copy.deepcopy(report)
        partial["recommendation"]["batch_basis"] = basis
        assert 'id="fitted-batch"' not in render_html(partial)
        assert "(interpolated)" not in render_markdown(partial).split("|")[0]
    partial = copy.deepcopy(report)
    partial["recommendation"]["batch_fit"] = None  # no fit described (an older report): a generic line instead
    assert "batch 3 interpolated from the candidate&#39;s latency-vs-batch fit" in render_html(partial)


def test_the_real_report_shows_fits_extrapolated_rows_and_tvm_tuning(real):
    page = render_html(real)
    assert_inert(page)
    assert all(f'id="{name}"' in page for name in SECTIONS)
    extrapolated = [r for r in real["ranking"] if r.get("batch_basis") == "extrapolated"]
    assert extrapolated and _ranking_table(page).count('class="badge b-extrapolated"') == len(extrapolated)
    sizing = _section(page, "sizing")
    assert "c7i.large: sized at batch 8 (measured)" in sizing and "16 (extrapolated beyond 8)" in sizing
    tuning = _section(page, "tuning")
    assert ('<div class="tuning-summary">12 trials on 1 of 6 tasks in 12 s (every task got its share); kernels: '
            "2 measured, 4 predicted by the cost model, 0 sampled</div>") in tuning
    assert "tuning-summary\">tuned in an earlier trial: 12 trials" in tuning  # the confirm build reused the tuning
    assert "0 trials on 0 of 6 tasks in 4.06 s (stopped by deadline)" in tuning
    # the caption has the whole story, the table's tooltip every detail; the database's path only shortened
    assert ("1 task reused from the database; cost model warm-started on 32 records; kernels: 2 measured, 4 "
            "predicted by the cost model, 0 sampled; 12 records added to the database; final estimate") in tuning
    database = next(t["details"]["database"] for t in real["trials"] if "database" in (t.get("details") or {}))
    assert database not in page and "database=…/tvm/llvm_mcpu=sapphirerapids_num-cores=2-cf530a55" in tuning
    summary = render_markdown(real)
    assert "| 16 (extrapolated) |" in summary and "· batch 8\n" in summary


def test_tuning_summary_line():
    details = {"trials_used": 16, "tasks": 17, "tasks_tuned": 2, "tuning_time_s": 22.4, "stopped_by": "deadline",
               "functions": 17, "functions_from_database": 2, "functions_from_cost_model": 15,
               "functions_fallback": 0, "tasks_reused": 1, "warm_start_records": 40, "records_added": 16,
               "fallbacks_picked": 15, "database": "/cache/tvm/llvm-1234/database", "progress": [[1.0, 8, 2.5]]}
    assert tuning_summary(details, full=False) == \
        "16 trials on 2 of 17 tasks in 22 s (stopped by deadline); kernels: 2 measured, 15 predicted by the cost " \
        "model, 0 sampled"
    assert tuning_summary(details) == \
        "16 trials on 2 of 17 tasks in 22 s (stopped by deadline); 1 task reused from the database; cost model " \
        "warm-started on 40 records; kernels: 2 measured, 15 predicted by the cost model, 0 sampled; 16 records " \
        "added to the database"
    assert tuning_summary({"trials_used": 160, "tasks": 14, "tuning_time_s": 602.7}) == \
        "160 trials over 14 tasks in 10 min 3 s"
    assert tuning_summary({"trials_used": 1, "stopped_by": "nothing to tune", "functions": 6,
                           "functions_from_cost_model": 5}) == \
        "1 trial (nothing left to tune); kernels of 6: 0 measured, 5 predicted by the cost model, 0 sampled"
    assert tuning_summary({"trials_used": 0, "stopped_by": "no time to measure", "tuning_time_s": 6.5}) == \
        "0 trials in 6.5 s (no time to measure a round: schedules predicted by the cost model)"
    for untuned in (None, {}, {"tuned": False, "compile_time_s": 0.4}, {"trials_used": "n/a"}, "odd"):
        assert tuning_summary(untuned) is None


EXPORT = {"source": "models/ocr.pt", "source_kind": "torchscript", "exporter": "torch.onnx.export (dynamo)",
          "max_abs_error": 2.4e-06, "max_rel_error": 0.00031, "notes": ["exported at opset 17", "batch axis named"]}


def _model_section(page: str) -> str:
    return page[page.index('id="model"'):page.index('id="roofline"')]


def test_model_export_provenance_is_shown_in_the_model_section(sample, html):
    assert 'id="model-export"' not in html  # an ONNX source has no export block
    report = copy.deepcopy(sample)
    report["model"]["export"] = EXPORT
    model = _model_section(render_html(report))
    assert "<h3>Exported to ONNX</h3>" in model
    assert '<tr><th>source</th><td class="mono">models/ocr.pt</td></tr>' in model
    assert "<tr><th>kind</th><td>torchscript</td></tr>" in model
    assert "<tr><th>exporter</th><td>torch.onnx.export (dynamo)</td></tr>" in model
    assert "<tr><th>outputs vs the source</th><td>2.4e-06 max abs, 0.00031 max rel</td></tr>" in model
    assert "<li>exported at opset 17</li><li>batch axis named</li>" in model
    assert model.index('id="model-export"') < model.index('class="facts"')


def test_model_export_strings_are_escaped_and_any_field_may_be_missing(sample):
    report = copy.deepcopy(sample)
    report["model"]["export"] = poison(EXPORT)
    page = render_html(report)
    assert_inert(page)
    model = _model_section(page)
    assert "<img" not in model and "&lt;script&gt;alert(3)&lt;/script&gt;" in model
    for key in EXPORT:
        for value in (None, "missing"):
            partial = copy.deepcopy(sample)
            partial["model"]["export"] = {k: v for k, v in EXPORT.items() if k != key}
            if value is None:
                partial["model"]["export"][key] = None
            assert 'id="model-export"' in _model_section(render_html(partial))
    for odd in ({}, {"notes": "one note, not a list", "max_abs_error": "n/a"}, "not a dict", None):
        partial = copy.deepcopy(sample)
        partial["model"]["export"] = odd
        model = _model_section(render_html(partial))
        assert ('id="model-export"' in model) == isinstance(odd, dict)
        if isinstance(odd, dict):
            assert "<tr><th>outputs vs the source</th><td>not compared</td></tr>" in model
            assert ("<li>one note, not a list</li>" in model) == bool(odd)


# ---- robustness -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def light(sample) -> dict:
    """The sample cut down (fewer ranked rows, few samples per trial), so the many renderings below stay fast;
    it keeps the recommendation, its runner-up and every SLO verdict."""
    report = copy.deepcopy(sample)
    report["ranking"] = report["ranking"][:4] + report["ranking"][-4:]
    assert {r["slo_verdict"] for r in report["ranking"]} == {"meets", "borderline", "misses"}
    for trial in report["trials"]:
        if trial.get("latency_ms"):
            trial["latency_ms"]["samples_ms"] = trial["latency_ms"]["samples_ms"][:15]
    return report


def _render_both(report: dict) -> None:
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>") and "<svg" in page
    assert render_markdown(report).startswith("### advisor:")


@pytest.mark.parametrize("how", ["missing", "null"])
def test_renders_without_any_optional_top_level_field(light, how):
    for key in light:
        report = copy.deepcopy(light)
        if how == "missing":
            del report[key]
        else:
            report[key] = None
        _render_both(report)


@pytest.mark.parametrize("section", ["ranking", "trials", "backends", "targets"])
def test_renders_without_any_field_of_a_list_entry(light, section):
    for key in {k for entry in light[section] for k in entry}:
        report = copy.deepcopy(light)
        for entry in report[section]:
            entry.pop(key, None)
        _render_both(report)


@pytest.mark.parametrize("section", ["model", "recommendation", "roofline", "environment", "settings", "slo"])
def test_renders_without_any_field_of_a_section(light, section):
    # None rather than absent: `.get(key, default)` does not guard against it (absence is the top-level test's)
    for key in list(light[section]):
        report = copy.deepcopy(light)
        report[section][key] = None
        _render_both(report)


def test_minimal_reports_render():
    for minimal in ({}, {"schema": "advisor.report/v1"},
                    {"schema": "advisor.report/v1", "status": "no_slo_met", "slo": {"latency_ms": 5.0, "percentile":
                                                                                      "p99"},
                     "model": {"path": "m.onnx", "inputs": [], "sha256": "0" * 64}, "settings": {}, "environment": {},
                     "trials": [], "ranking": [], "recommendation": None}):
        page = render_html(minimal)
        assert "No instance meets the SLO" in page and "No instance could be ranked" in page
        assert_inert(page)
        assert "no instance meets the SLO" in render_markdown(minimal)


def test_write_reports(tmp_path, sample):
    paths = write_reports(sample, tmp_path / "new" / "run")
    assert set(paths) == {"html", "markdown"}
    assert paths["html"] == tmp_path / "new" / "run" / "report.html"
    assert paths["html"].read_text(encoding="utf-8") == render_html(sample)
    assert paths["markdown"].name == "summary.md" and paths["markdown"].read_text().startswith("### advisor:")


# ---- building blocks ----------------------------------------------------------------------------------------------


def test_svg_builder_escapes_text_and_attributes():
    svg = Svg(100, 50, f"label {HOSTILE}")
    svg.text(1, 2, HOSTILE, data_x='"><b>')
    svg.open("g", tooltip=HOSTILE)
    svg.close()
    markup = str(svg.markup())
    assert HOSTILE not in markup and "<b>" not in markup and markup.count(ESCAPED) == 4
    assert 'data-x="&quot;&gt;&lt;b&gt;"' in markup and 'font-size="12"' in markup


def test_scales_and_ticks():
    log = auto_scale([0.07, 88.0], 0, 100)
    assert log.log and (log.lo, log.hi) == (0.05, 100)
    assert log.ticks() == [0.1, 0.3, 1, 3, 10, 30, 100]
    assert log(0.05) == 0 and log(100) == 100
    linear = auto_scale([10.2, 14.9], 0, 100)
    assert not linear.log and linear.lo <= 10.2 and linear.hi >= 14.9
    assert linear.ticks() == [10, 11, 12, 13, 14, 15, 16]  # padded, then rounded out to whole ticks
    assert auto_scale([0, 5], 0, 100, zero=True).ticks()[0] == 0
    assert Scale(0, 10, 100, 0)(5) == 50  # inverted (a y axis)
    assert auto_scale([], 0, 1) == Scale(0.0, 1.0, 0, 1)
    assert [tick_label(v) for v in (0.05, 0.5, 2, 20, 1000, 20000)] == ["0.05", "0.5", "2", "20", "1,000", "20k"]


def test_formatting():
    assert [fmt.ms(v) for v in (14.72, 1238.4, 0.07514, 25.0, None, float("nan"))] == \
        ["14.7", "1,238", "0.0751", "25", "—", "—"]
    assert [fmt.money(v) for v in (0.2361, 0.0765, 223.38, 12345.6, None)] == \
        ["$0.236", "$0.0765", "$223", "$12,346", "—"]
    assert [fmt.number(v) for v in (0.7, 0.05, 3, 23.5, 12345.678)] == ["0.7", "0.05", "3", "23.5", "12,300"]
    assert fmt.si(1432518656, "FLOP") == "1.43 GFLOP" and fmt.si(69557760, "B") == "69.6 MB"
    assert fmt.when("2026-11-22T09:14:03+00:00") == "2026-11-22 09:14 UTC"
    assert [fmt.duration(v) for v in (4.1, 48.2, 603, 7500)] == ["4.1 s", "48 s", "10 min 3 s", "2 h 5 min"]
    assert fmt.config_text({"a": 1, "stock": True, "b": 0.95, "c": False}, {"stock"}) == "a=1, b=0.95, c=no"
    assert md("a|b <x> *y* `z`") == "a\\|b &lt;x&gt; \\*y\\* \\`z\\`"


# ---- a real run --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_run_with_hostile_names(tmp_path):
    """The pipeline's own report.json on a model whose input, output and node names carry markup."""
    model = models.tiny_mlp()
    old_in, old_out = model.graph.input[0].name, model.graph.output[0].name
    for node in model.graph.node:
        node.name = f'{node.name}"><img src=x onerror=alert(2)>'
        node.input[:] = [HOSTILE if n == old_in else n for n in node.input]
        node.output[:] = [f"{HOSTILE}out" if n == old_out else n for n in node.output]
    model.graph.input[0].name = HOSTILE
    model.graph.output[0].name = f"{HOSTILE}out"
    onnx.save(model, str(tmp_path / "hostile.onnx"))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        __import__("advisor.cli", fromlist=["cli"]).cli,
        ["recommend", str(tmp_path / "hostile.onnx"), "--slo", "50ms", "--out", str(out), "--backends", "onnxruntime",
         "--budget", "8s", "--min-time", "0.05s", "--batch-sizes", "1,2", "--quiet", "--qps", "300", "--no-artifact"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page == render_html(report)  # the run's page is exactly a rendering of its JSON
    assert HOSTILE not in page and ESCAPED in page
    assert_inert(page)
    assert f'<span id="recommended-instance">{report["recommendation"]["instance"]}</span>' in page
    assert all(f'id="{name}"' in page for name in SECTIONS)
    summary = (out / "summary.md").read_text()
    assert summary == render_markdown(report) and "<script>" not in summary
