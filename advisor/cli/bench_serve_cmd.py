"""`advisor bench-serve URL`: load-test an OpenAI-compatible server and report TTFT, ITL, TPOT, e2e and goodput."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from advisor.cli.options import DurationType, LatencyType
from advisor.errors import UserError
from advisor.llm.loadgen import (
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    DEFAULT_VOCAB_SIZE,
    ENDPOINTS,
    BenchConfig,
    BenchProgress,
    load_trace,
)
from advisor.llm.workload import ARRIVALS, LengthDistribution, WorkloadError, load_workload
from advisor.measure import PERCENTILES

DEFAULT_DURATION_S = 60.0
METRICS = (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TPOT", "tpot_ms"), ("E2E", "e2e_ms"))


def _config(url, endpoint, model, rate, arrival, concurrency, duration_s, num_requests, prompt_tokens, output_tokens,
            workload_path, trace_path, prompt_ids, vocab_size, ignore_eos, warmup, request_timeout_s, drain_timeout_s,
            seed, api_key) -> BenchConfig:
    """The run's config from the options; conflicting or missing ones are one UserError line."""
    if duration_s is not None and num_requests is not None:
        raise click.UsageError("give --duration or --num-requests, not both")
    if trace_path is not None and (workload_path is not None or prompt_tokens or output_tokens or arrival):
        raise click.UsageError("--trace gives arrivals and lengths: --workload, --prompt-tokens, --output-tokens "
                               "and --arrival do not apply")
    if workload_path is not None and (prompt_tokens or output_tokens):
        raise click.UsageError("--workload gives the lengths: --prompt-tokens and --output-tokens do not apply")
    prompts = LengthDistribution.fixed(prompt_tokens or DEFAULT_PROMPT_TOKENS)
    outputs = LengthDistribution.fixed(output_tokens or DEFAULT_OUTPUT_TOKENS)
    prefix, trace = 0.0, ()
    if workload_path is not None:
        try:
            workload = load_workload(workload_path)
        except WorkloadError as error:
            raise UserError(str(error)) from None
        prompts, outputs, prefix = workload.prompt_tokens, workload.output_tokens, workload.shared_prefix_fraction
        arrival = arrival or workload.arrival
        if rate is None and concurrency is None:
            rate = workload.rate_rps
        if duration_s is None and num_requests is None:
            duration_s = workload.duration_s
    if trace_path is not None:
        trace = load_trace(trace_path)
        if duration_s is None and num_requests is None:
            num_requests = len(trace)  # the whole trace, however long
    if duration_s is None and num_requests is None:
        duration_s = DEFAULT_DURATION_S
    if arrival is not None and rate is None:
        raise click.UsageError("--arrival shapes the arrivals at --rate: give --rate too")
    return BenchConfig(url, model, endpoint, prompts, outputs, prefix, rate, arrival or "poisson", concurrency, trace,
                       duration_s, num_requests, warmup, request_timeout_s, drain_timeout_s, prompt_ids, vocab_size,
                       ignore_eos, seed, api_key)


class _ProgressLine:
    """One live line on stderr: phase, elapsed time, sent, completed, errors, in flight."""

    def __init__(self, config: BenchConfig):
        from rich.console import Console
        from rich.live import Live

        self._goal = (f"{config.duration_s:g} s" if config.duration_s is not None else
                      f"{config.num_requests} requests")
        self._live = Live("starting", console=Console(file=sys.stderr, highlight=False), refresh_per_second=2,
                          transient=True)
        self._live.start()

    def __call__(self, p: BenchProgress) -> None:
        self._live.update(f"{p.phase} {p.elapsed_s:5.1f} s (of {self._goal}): sent {p.sent}, completed "
                          f"{p.completed}, errors {p.errors}, in flight {p.in_flight}")

    def close(self) -> None:
        self._live.stop()


def _ms(value: float) -> str:
    """Three significant figures or more: 1316, 44.4, 9.98, 0.0812."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _cell(block: dict, percentile: str) -> str:
    value = block[percentile]
    if value is None:
        return "-"
    low, high = block["interval"][percentile]
    flag = "" if block["sufficient"][percentile] else "*"
    return f"{_ms(value)}{flag} [{_ms(low)}, {_ms(high)}]"


def print_summary(summary: dict) -> None:
    """The metrics table and the throughput lines on stdout."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=max(110, Console().width))
    server, settings = summary["server"], summary["settings"]
    console.print(f"{server['model']} at {server['url']}{settings['endpoint']}: {settings['load']}, "
                  f"{summary['wall_s']:.1f} s measured")
    table = Table("ms", *(f"{p} [95% interval]" for p in PERCENTILES), "mean", "samples", box=box.SIMPLE_HEAD)
    for label, key in METRICS:
        block = summary[key]
        mean = "-" if block["mean"] is None else _ms(block["mean"])
        table.add_row(label, *(_cell(block, p) for p in PERCENTILES), mean, str(block["samples"]))
    console.print(table)
    if any(not summary[key]["sufficient"][p] for _, key in METRICS for p in PERCENTILES if summary[key]["samples"]):
        need = ", ".join(f"{p} {n}" for p, n in summary["min_samples_per_percentile"].items())
        console.print(f"* fewer samples than that percentile needs ({need}): its interval reaches the slowest sample")
    errors = ", ".join(f"{kind} {count}" for kind, count in sorted(summary["errors_by_kind"].items()))
    console.print(f"requests {summary['requests']}: completed {summary['completed']}, errors {summary['errors']}"
                  f"{f' ({errors})' if errors else ''}")
    rate, tokens = summary["request_rate_rps"], summary["output_tokens_per_s"]
    if rate is not None:
        console.print(f"throughput: {rate:.2f} requests/s, {tokens:.1f} output tokens/s")
    slo = summary["slo"]
    if summary["goodput_rps"] is not None:
        given = " and ".join(f"{name} <= {slo[key]:g} ms" for name, key in (("TTFT", "ttft_ms"), ("TPOT", "itl_ms"))
                             if slo[key] is not None)
        console.print(f"goodput ({given}): {summary['goodput_rps']:.2f} requests/s, "
                      f"{100 * slo['meeting_all_share']:.1f} % of requests")
    lengths = summary["lengths"]
    if lengths["prompt_tokens_reported_mean"] is not None:
        console.print(f"prompt tokens: {lengths['prompt_tokens_requested_mean']:.1f} requested, "
                      f"{lengths['prompt_tokens_reported_mean']:.1f} counted by the server (mean)")


@click.command("bench-serve")
@click.argument("url")
@click.option("--endpoint", type=click.Choice(tuple(ENDPOINTS)), default="completions", show_default=True,
              help="/v1/completions or /v1/chat/completions.")
@click.option("--model", default=None, help="Model to ask for (default: the first GET /v1/models lists).")
@click.option("--rate", "rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Arrival rate in requests per second (open loop; with --concurrency, capped by it).")
@click.option("--arrival", type=click.Choice(ARRIVALS), default=None,
              help="Arrival process at --rate: poisson (default) or constant.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Closed loop: N users, each sending its next request when the previous ends; with --rate or "
                   "--trace, the most requests in flight.")
@click.option("--duration", "duration_s", type=DurationType(), default=None,
              help="Send arrivals for this long, e.g. 90s, 3m (default 60s; the workload file's duration_s; the "
                   "whole --trace).")
@click.option("--num-requests", type=click.IntRange(min=1), default=None,
              help="Send this many requests instead of running for --duration.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=None,
              help=f"Prompt length in tokens (default {DEFAULT_PROMPT_TOKENS}).")
@click.option("--output-tokens", type=click.IntRange(min=1), default=None,
              help=f"Tokens generated per request (default {DEFAULT_OUTPUT_TOKENS}).")
@click.option("--workload", "workload_path", type=click.Path(path_type=Path), default=None,
              help="Workload file (docs/llm.md): length distributions, rate, arrival, shared prefix, duration.")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), default=None,
              help='Replay a JSONL trace of {"timestamp_s", "prompt_tokens", "output_tokens"}.')
@click.option("--ttft", "ttft_ms", type=LatencyType(), default=None, help="TTFT SLO for goodput, e.g. 800ms.")
@click.option("--itl", "itl_ms", type=LatencyType(), default=None,
              help="Inter-token SLO for goodput, judged on each request's TPOT, e.g. 60ms.")
@click.option("--prompt-ids", is_flag=True, help="Send prompts as token-id lists (exact lengths; /v1/completions).")
@click.option("--vocab-size", type=click.IntRange(min=1), default=DEFAULT_VOCAB_SIZE, show_default=True,
              help="Token ids for --prompt-ids are drawn from [0, N).")
@click.option("--ignore-eos/--no-ignore-eos", default=True, show_default=True,
              help="Send vLLM's ignore_eos and min_tokens so each request generates exactly its output tokens.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Requests sent one by one before measuring, not measured.")
@click.option("--request-timeout", "request_timeout_s", type=DurationType(), default="120s", show_default=True,
              help="Time-out of one request; a request over it counts as an error.")
@click.option("--drain-timeout", "drain_timeout_s", type=DurationType(), default="60s", show_default=True,
              help="After --duration, how long to wait for requests in flight (the rest count as errors).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of arrivals, lengths and prompts.")
@click.option("--api-key", default=None, help="Sent as 'Authorization: Bearer KEY'.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the results (schema advisor.bench_serve/v1) here.")
@click.option("--record", "record_path", type=click.Path(path_type=Path), default=None,
              help="Also write the run as a measurement record (advisor.llm.measurement/v1) for `advisor recommend "
                   "--measurements`; needs --instance, --model-config and --precision.")
@click.option("--instance", default=None, help="--record: the catalogue instance the server ran on.")
@click.option("--model-config", type=click.Path(path_type=Path), default=None,
              help="--record: the served model's Hugging Face folder or config.json.")
@click.option("--precision", default=None, help="--record: the served precision (bf16, fp16, fp8, int8-wo, int4-wo, "
                                                "fp32).")
@click.option("--tensor-parallel", type=click.IntRange(min=1), default=1, show_default=True,
              help="--record: GPUs per engine replica.")
@click.option("--engine", "engine_name", default="vllm", show_default=True, help="--record: the serving engine.")
@click.option("--engine-version", default="unknown", show_default=True, help="--record: its version.")
@click.option("--catalog", "catalogs", type=click.Path(path_type=Path), multiple=True,
              help="--record: extra catalogue files in which to find --instance.")
@click.option("--quiet", "-q", is_flag=True, help="No progress line on stderr.")
def bench_serve(url, endpoint, model, rate, arrival, concurrency, duration_s, num_requests, prompt_tokens,
                output_tokens, workload_path, trace_path, ttft_ms, itl_ms, prompt_ids, vocab_size, ignore_eos, warmup,
                request_timeout_s, drain_timeout_s, seed, api_key, json_path, record_path, instance, model_config,
                precision, tensor_parallel, engine_name, engine_version, catalogs, quiet):
    """Load-test the OpenAI-compatible server at URL (vLLM, SGLang, TGI, llama.cpp, the advisor's own) with
    streamed requests, and report TTFT, inter-token latency, TPOT and end-to-end latency (p50/p90/p95/p99 with 95 %
    intervals), throughput, and goodput against --ttft/--itl. Definitions: docs/llm.md, "Metric definitions".

    Exit status: 0 the run was made (failed requests are counted and reported), 2 bad input or URL unreachable.
    """
    from advisor.llm.loadgen import check_server, run_benchmark
    from advisor.runfolder import write_json_atomic

    config = _config(url, endpoint, model, rate, arrival, concurrency, duration_s, num_requests, prompt_tokens,
                     output_tokens, workload_path, trace_path, prompt_ids, vocab_size, ignore_eos, warmup,
                     request_timeout_s, drain_timeout_s, seed, api_key)
    where = _record_instance(record_path, instance, model_config, precision, catalogs)
    model = check_server(config)  # before the progress line: an unreachable URL is one line, alone
    progress = None if quiet else _ProgressLine(config)
    try:
        run = run_benchmark(config, progress, model)
    finally:
        if progress is not None:
            progress.close()
    summary = run.summary(ttft_ms, itl_ms)
    if json_path is not None:
        write_json_atomic(json_path, summary)
    if record_path is not None:
        from advisor.llm.serving_record import serving_record

        record = serving_record(summary, instance=where, model_config=model_config, precision=precision,
                                tensor_parallel=tensor_parallel, engine=engine_name, engine_version=engine_version)
        write_json_atomic(record_path, record.to_dict())
    print_summary(summary)
    if record_path is not None:
        print(f"measurement record {record.id}: {record_path} (advisor recommend ... --measurements {record_path})")
    return 0


def _record_instance(record_path, instance, model_config, precision, catalogs):
    """--record's instance from the catalogues, checked (with the model config and precision) before any request."""
    if record_path is None:
        return None
    missing = [flag for flag, value in (("--instance", instance), ("--model-config", model_config),
                                        ("--precision", precision)) if value is None]
    if missing:
        raise UserError(f"--record needs {', '.join(missing)}: where the server ran and what it served")
    from advisor.llm.architecture import load_architecture
    from advisor.llm.precision import precision_named
    from hwprofiles.catalog import load_catalog

    load_architecture(model_config)  # a missing or non-causal-LM config: one line now, not after the run
    precision_named(precision)
    catalog = load_catalog(list(catalogs))
    found = catalog.get(instance)
    if found is None:
        raise UserError(f"--instance {instance!r} is not in the catalogue ({len(catalog)} instances; --catalog FILE "
                        "adds yours)")
    return found
