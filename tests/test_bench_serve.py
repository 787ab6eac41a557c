"""`advisor bench-serve`: the load generator and its metrics against a server whose token timing is scripted
(tests/scripted_openai_server.py: first token 40 ms after arrival, then one chunk every 10 ms, unless a test says
otherwise).

Tolerances: nothing can be seen before the server sends it, so lower bounds are tight (0.5 ms). Upper bounds allow
for the client's and the server's scheduling: both share this process and two cores that other jobs load too
(stalls of 100 ms were seen at a load average of 5), so a p50 may be late by SLACK_MS, and arrivals are checked
on their median and on most requests, not on every one (a stall delays the few arrivals that fall in it)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from advisor.errors import UserError
from advisor.llm.loadgen import BenchConfig, arrival_times, load_trace, parse_sse_data, run_benchmark
from advisor.llm.workload import LengthDistribution
from cli_helpers import invoke, one_line_error
from scripted_openai_server import Script, ScriptedServer, prompt_words

pytestmark = pytest.mark.timeout(60)

TTFT_MS, ITL_MS = 40.0, 10.0
SLACK_MS = 20.0  # how late a p50 of TTFT or e2e may be (one way only: early is impossible)
METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms")


def bench(server: ScriptedServer, **settings):
    """A run against `server`: 8-word prompts, 20 output tokens, no warm-up, unless `settings` say otherwise."""
    defaults = dict(prompt_tokens=LengthDistribution.fixed(8), output_tokens=LengthDistribution.fixed(20),
                    warmup=0, duration_s=None, request_timeout_s=10.0)
    return run_benchmark(BenchConfig(server.url, **{**defaults, **settings}))


def within(value, expected, below=0.5, above=SLACK_MS):
    return expected - below <= value <= expected + above


# ---------------------------------------------------------------------------------- metrics against the script


def test_percentiles_match_the_scripted_timing():
    with ScriptedServer() as server:
        run = bench(server, rate_rps=40.0, num_requests=40)
    summary = run.summary()
    assert summary["requests"] == summary["completed"] == 40 and summary["errors"] == 0
    ttft, itl, tpot, e2e = (summary[m] for m in METRICS)
    assert within(ttft["p50"], TTFT_MS), ttft
    assert min(r.ttft_ms for r in run.records) >= TTFT_MS - 0.5  # no token is seen before the server sends it
    assert within(itl["p50"], ITL_MS, 1.0, 2.0) and within(itl["mean"], ITL_MS, 1.0, 2.0), itl
    assert itl["samples"] == 40 * 19  # 20 chunks: 19 gaps per request, pooled
    assert within(tpot["p50"], ITL_MS, 1.0, 2.0), tpot
    assert within(e2e["p50"], TTFT_MS + 19 * ITL_MS), e2e  # e2e = TTFT + (n - 1) x ITL
    assert min(r.e2e_ms for r in run.records) >= TTFT_MS + 19 * ITL_MS - 0.5  # the last token is not seen early
    decode_ms = np.median([r.e2e_ms - r.ttft_ms for r in run.records])  # the scripted 19 gaps, request by request
    assert within(decode_ms, 19 * ITL_MS, 5.0, SLACK_MS), decode_ms
    for block in (ttft, itl, tpot, e2e):
        assert block["interval"]["p50"][0] <= block["p50"] <= block["interval"]["p50"][1]
    # 40 requests: a p50 is meaningful, a p99 is not, and is flagged with an interval reaching the slowest one
    assert ttft["sufficient"] == {"p50": True, "p90": False, "p95": False, "p99": False}
    assert ttft["interval"]["p99"][1] >= max(r.ttft_ms for r in run.records) - 1e-9
    assert summary["output_tokens"] == 800
    assert summary["output_tokens_per_s"] == pytest.approx(800 / summary["wall_s"])
    assert summary["request_rate_rps"] == pytest.approx(40 / summary["wall_s"])
    assert summary["lengths"]["output_tokens_from_usage"] == 40
    assert summary["lengths"]["prompt_tokens_reported_mean"] == 8.0
    json.dumps(summary, allow_nan=False)


@pytest.mark.parametrize("usage", [True, False])
def test_itl_is_per_chunk_and_tpot_per_token(usage):
    """Two tokens per chunk, chunks 10 ms apart, chat endpoint (its first event is role-only, not a token)."""
    with ScriptedServer(Script(tokens_per_chunk=2, usage=usage)) as server:
        run = bench(server, endpoint="chat", concurrency=4, num_requests=8)
    summary = run.summary()
    assert summary["completed"] == 8
    assert min(r.ttft_ms for r in run.records) >= TTFT_MS - 0.5  # the role-only first event is not the first token
    assert within(summary["itl_ms"]["p50"], ITL_MS, 1.0, 2.0)  # per chunk
    tokens = 20 if usage else 10  # usage.completion_tokens, else the content chunks
    assert {r.output_tokens for r in run.records} == {tokens}
    assert within(summary["tpot_ms"]["p50"], 9 * ITL_MS / (tokens - 1), 0.5, 1.5)  # 9 gaps over tokens - 1


def test_goodput_with_slos_between_and_outside_the_scripted_values():
    """Every other request gets its first token 100 ms later: TTFT 40 or 140 ms; TPOT is 10 ms."""
    with ScriptedServer(Script(ttft_jitter_s=(0.0, 0.1))) as server:
        run = bench(server, rate_rps=40.0, num_requests=20)
    wall = run.wall_s
    between = run.summary(slo_ttft_ms=90, slo_itl_ms=20)
    assert between["slo"]["meeting_ttft_share"] == 0.5 and between["slo"]["meeting_itl_share"] == 1.0
    assert between["goodput_rps"] == pytest.approx(10 / wall)
    above = run.summary(slo_ttft_ms=300, slo_itl_ms=20)
    assert above["goodput_rps"] == pytest.approx(20 / wall) == pytest.approx(above["request_rate_rps"])
    assert run.summary(slo_ttft_ms=20)["goodput_rps"] == 0.0  # TTFT SLO below every request's
    tight_itl = run.summary(slo_ttft_ms=300, slo_itl_ms=5)  # TPOT SLO below the scripted 10 ms
    assert tight_itl["goodput_rps"] == 0.0 and tight_itl["slo"]["meeting_itl_share"] == 0.0
    assert run.summary()["goodput_rps"] is None  # no SLO, no goodput
    assert between["ttft_ms"] == above["ttft_ms"]  # the SLOs change nothing else: a pure function of the records


def test_failures_are_counted_by_kind_and_kept_out_of_the_latencies():
    """Of 22 requests (server order): 5th, 10th, ... HTTP 500; 7th, 14th, 21st an SSE error after the first token;
    11th and 22nd stall past the 0.5 s request timeout."""
    script = Script(http_error_every=5, sse_error_every=7, stall_every=11, stall_s=1.0)
    with ScriptedServer(script) as server:
        run = bench(server, concurrency=4, num_requests=22, request_timeout_s=0.5)
    summary = run.summary(slo_ttft_ms=1000)
    assert summary["requests"] == 22 and summary["completed"] == 13 and summary["errors"] == 9
    assert summary["errors_by_kind"] == {"http_500": 4, "sse_error": 3, "timeout": 2}
    assert "scripted" in summary["error_examples"]["http_500"]
    for metric in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert summary[metric]["samples"] == 13
    assert summary["e2e_ms"]["p99"] < 400  # the timed-out requests (500 ms) are not in it
    assert summary["slo"]["meeting_all_share"] == pytest.approx(13 / 22)  # a failed request meets no SLO
    assert summary["output_tokens"] == 13 * 20


def test_requests_in_flight_when_the_drain_ends_are_errors():
    with ScriptedServer() as server:
        run = bench(server, rate_rps=20.0, duration_s=0.3, drain_timeout_s=0.3, output_tokens=
                    LengthDistribution.fixed(200))  # 2 s per request
    summary = run.summary(slo_ttft_ms=100)
    assert summary["requests"] >= 1 and summary["completed"] == 0
    assert summary["errors_by_kind"] == {"unfinished": summary["requests"]}
    assert summary["ttft_ms"]["p50"] is None and summary["goodput_rps"] == 0.0
    assert max(r.end_s for r in run.records) < 1.5
    json.dumps(summary, allow_nan=False)


# ------------------------------------------------------------------------------------------ arrival processes


def _server_offsets(server: ScriptedServer) -> np.ndarray:
    arrived = np.array([a.arrived_s for a in server.arrivals()])
    return arrived - arrived[0]


def test_poisson_arrivals_follow_the_seeded_schedule():
    with ScriptedServer() as server:
        run = bench(server, rate_rps=50.0, num_requests=60, output_tokens=LengthDistribution.fixed(2), seed=3)
        offsets = _server_offsets(server)
    planned = arrival_times(run.config)
    assert len(planned) == len(offsets) == 60
    late = offsets - planned
    late -= np.median(late)  # the server's clock starts at its first arrival, itself possibly late
    assert np.median(np.abs(late)) < 0.005 and np.mean(np.abs(late) < 0.015) >= 0.6, late
    gaps = np.diff(planned)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.3)
    assert gaps.std() / gaps.mean() > 0.6  # exponential gaps: coefficient of variation 1


def test_constant_arrivals_are_evenly_spaced():
    with ScriptedServer() as server:
        run = bench(server, rate_rps=50.0, arrival="constant", num_requests=30,
                    output_tokens=LengthDistribution.fixed(2))
        offsets = _server_offsets(server)
    planned = arrival_times(run.config)
    assert np.allclose(np.diff(planned), 0.02)
    late = offsets - planned
    late -= np.median(late)
    assert np.median(np.abs(late)) < 0.005 and np.mean(np.abs(late) < 0.015) >= 0.6, late


def test_closed_loop_never_exceeds_its_users():
    with ScriptedServer() as server:
        run = bench(server, concurrency=3, num_requests=15, output_tokens=LengthDistribution.fixed(5))
        assert server.max_in_flight() == 3
    assert run.summary()["completed"] == 15 and all(r.scheduled_s is None for r in run.records)
    with ScriptedServer() as server:  # a rate far above what 2 users can send: capped, the sends run late
        run = bench(server, rate_rps=200.0, concurrency=2, num_requests=10, output_tokens=LengthDistribution.fixed(5))
        assert server.max_in_flight() <= 2
    summary = run.summary()
    assert summary["request_rate_rps"] < 2 / ((TTFT_MS + 4 * ITL_MS) / 1000) * 1.05
    assert summary["client"]["send_lag_ms_max"] > 100


def test_closed_loop_for_a_duration_sends_nothing_after_it():
    with ScriptedServer() as server:
        run = bench(server, concurrency=2, duration_s=0.5, num_requests=None, output_tokens=LengthDistribution.fixed(3))
    assert len(run.records) >= 6 and max(r.sent_s for r in run.records) < 0.5
    assert run.summary()["errors"] == 0


# ---------------------------------------------------------------------------------------- lengths and traces


def test_workload_file_lengths_and_shared_prefix(tmp_path):
    workload = tmp_path / "workload.yaml"
    workload.write_text("prompt_tokens: {histogram: [{tokens: [10, 20], weight: 1}, {tokens: 40, weight: 1}]}\n"
                        "output_tokens: {histogram: [{tokens: 3, weight: 1}, {tokens: 6, weight: 1}]}\n"
                        "rate_rps: 100\nshared_prefix_fraction: 0.5\nduration_s: 0.4\n")
    out = tmp_path / "out.json"
    with ScriptedServer() as server:
        result = invoke("bench-serve", server.url, "--workload", workload, "--warmup", 0, "--json", out, "-q")
        bodies = [a.body for a in server.arrivals()]
    assert result.exit_code == 0, result.output
    assert len(bodies) >= 15  # 0.4 s at 100 requests/s
    outputs = [b["max_tokens"] for b in bodies]
    prompts = [prompt_words(b) for b in bodies]
    assert set(outputs) == {3, 6}
    assert all(10 <= n <= 20 or n == 40 for n in prompts) and 40 in prompts and min(prompts) <= 20
    assert all(b["ignore_eos"] is True and b["min_tokens"] == b["max_tokens"] for b in bodies)
    prefix = round(0.5 * (15 + 40) / 2)  # half the mean prompt, at most all words but one of a prompt
    longest = max((b["prompt"].split() for b in bodies), key=len)
    for words in (b["prompt"].split() for b in bodies):
        shared = min(prefix, len(words) - 1)
        assert words[:shared] == longest[:shared]  # every prompt starts with the same words
    assert len({b["prompt"] for b in bodies}) == len(bodies)  # and goes on with its own
    summary = json.loads(out.read_text())
    assert summary["settings"]["duration_s"] == 0.4 and summary["settings"]["load"] == "poisson at 100 rps"
    assert summary["settings"]["output_tokens"]["histogram"][0]["tokens"] == 3
    assert summary["lengths"]["prompt_tokens_requested_mean"] == summary["lengths"]["prompt_tokens_reported_mean"]


def test_trace_replay_keeps_its_timestamps_and_lengths(tmp_path):
    trace = tmp_path / "trace.jsonl"
    rows = [(10.0, 5, 2), (10.05, 6, 3), (10.2, 7, 4), (10.25, 8, 5), (10.5, 9, 6)]
    trace.write_text("\n".join(json.dumps({"timestamp_s": t, "prompt_tokens": p, "output_tokens": o, "id": i})
                               for i, (t, p, o) in enumerate(rows)) + "\n")
    out = tmp_path / "out.json"
    with ScriptedServer() as server:  # no --duration: the whole trace
        result = invoke("bench-serve", server.url, "--trace", trace, "--warmup", 0, "--json", out, "-q")
        offsets = _server_offsets(server)
        bodies = [a.body for a in server.arrivals()]
    assert result.exit_code == 0, result.output
    late = offsets - np.array([0, 0.05, 0.2, 0.25, 0.5])
    assert np.median(np.abs(late - np.median(late))) < 0.015, late
    assert [b["max_tokens"] for b in bodies] == [2, 3, 4, 5, 6]
    assert [prompt_words(b) for b in bodies] == [5, 6, 7, 8, 9]
    summary = json.loads(out.read_text())
    assert summary["completed"] == 5 and summary["settings"]["load"] == "trace"


def test_prompt_ids_have_exact_lengths_within_the_vocabulary():
    with ScriptedServer() as server:
        bench(server, concurrency=2, num_requests=4, prompt_ids=True, vocab_size=50,
              prompt_tokens=LengthDistribution.fixed(33))
        prompts = [a.body["prompt"] for a in server.arrivals()]
    assert all(len(p) == 33 and all(0 <= i < 50 for i in p) for p in prompts)


def test_sse_payloads():
    assert parse_sse_data(" [DONE]").done
    assert parse_sse_data('{"choices": [{"text": " a"}]}').text == " a"
    assert parse_sse_data('{"choices": [{"delta": {"role": "assistant", "content": ""}}]}', "chat").text == ""
    assert parse_sse_data('{"choices": [{"delta": {"content": "b"}}]}', "chat").text == "b"
    assert parse_sse_data('{"choices": [], "usage": {"completion_tokens": 7}}').usage == {"completion_tokens": 7}
    assert parse_sse_data('{"error": {"message": "overloaded"}}').error == "overloaded"
    assert parse_sse_data('{"object": "error", "message": "bad", "code": 400}').error == "bad"  # vLLM's form
    assert parse_sse_data('{"message": "x"}', event="error").error == "x"
    assert parse_sse_data("not json").error.startswith("an SSE event that is not JSON")


# ----------------------------------------------------------------------------------------------------- the CLI


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "out.json"
    with ScriptedServer() as server:
        result = invoke("bench-serve", server.url, "--duration", "2s", "--rate", "20", "--json", out,
                        "--ttft", "1s", "--itl", "100ms")
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["schema"] == "advisor.bench_serve/v1"
    for metric in METRICS:
        assert {"p50", "p90", "p95", "p99", "mean", "interval", "samples"} <= set(summary[metric])
    assert {"requests", "errors", "output_tokens_per_s", "goodput_rps", "completed", "errors_by_kind",
            "request_rate_rps", "slo", "settings", "server", "started_at", "wall_s", "advisor_version"} <= set(summary)
    assert summary["server"]["model"] == "scripted-model" and summary["errors"] == 0
    assert 20 <= summary["requests"] <= 65  # Poisson at 20/s for 2 s
    assert 0 < summary["goodput_rps"] == pytest.approx(summary["slo"]["meeting_all_share"] * summary["requests"]
                                                       / summary["wall_s"])
    assert within(summary["tpot_ms"]["p50"], ITL_MS, 1.0, 2.0)
    assert summary["settings"]["warmup"] == 1 and summary["settings"]["prompt_tokens"]["fixed"] == 1024
    assert "TTFT" in result.output and "goodput" in result.output


@pytest.mark.parametrize("args, message", [
    (["--rate", "5", "--duration", "soon"], "invalid duration 'soon'"),
    (["--rate", "-1"], "--rate"),
    (["--rate", "5", "--ttft", "fast"], "invalid latency 'fast'"),
    (["--rate", "5", "--duration", "1s", "--num-requests", "3"], "not both"),
    ([], "give the load"),
    (["--concurrency", "2", "--arrival", "constant"], "--arrival"),
    (["--rate", "5", "--workload", "missing.yaml"], "cannot read the workload file"),
    (["--trace", "missing.jsonl"], "cannot read the trace"),
    (["--rate", "5", "--prompt-ids", "--endpoint", "chat"], "--prompt-ids"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("bench-serve", "http://127.0.0.1:9", *args)
    assert result.exit_code == 2
    assert message in one_line_error(result)


def test_bad_trace_line_and_bad_url(tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text('{"timestamp_s": 0, "prompt_tokens": 4, "output_tokens": 2}\n{"timestamp_s": 1, "prompt_tokens": 0'
                     ', "output_tokens": 2}\n')
    result = invoke("bench-serve", "http://127.0.0.1:9", "--trace", trace)
    assert result.exit_code == 2 and "line 2: prompt_tokens" in one_line_error(result)
    result = invoke("bench-serve", "ftp://example", "--rate", "1")
    assert result.exit_code == 2 and "invalid URL" in one_line_error(result)
    with pytest.raises(UserError, match="not valid JSON"):
        trace.write_text("{oops\n")
        load_trace(trace)


def test_a_server_that_is_down_is_one_line():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke("bench-serve", f"http://127.0.0.1:{port}", "--rate", "1", "--duration", "1s")
    assert result.exit_code == 2
    assert f"cannot reach http://127.0.0.1:{port}:" in one_line_error(result)


def test_ctrl_c_stops_the_run_with_one_line_and_no_resume_advice():
    """Interrupting bench-serve is exit 130 with one line, at once even during the warm-up request (a cancellation
    is swallowed only when the drain cancels requests); --resume belongs to recommend's run folders only."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    with ScriptedServer(Script(ttft_s=5.0)) as server:  # the interrupt lands in the warm-up request
        process = subprocess.Popen([sys.executable, "-c", "from advisor.cli import main; main()", "bench-serve",
                                    server.url, "--rate", "5", "--duration", "60s", "--prompt-tokens", "8",
                                    "--output-tokens", "4", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=Path(__file__).resolve().parents[1],
                                   # SIGINT as a terminal delivers it, even when this test run inherited it ignored
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 30
        while not server.arrivals() and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)  # the run would last 60 s if the interrupt were lost
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "advisor: interrupted"
