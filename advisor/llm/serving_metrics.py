"""Serving metrics of a load test against an OpenAI-compatible server (`advisor bench-serve`): one definition each.

Every time is taken by the client (time.perf_counter), per request, from the moment the request is handed to the
HTTP client ("sent"); the same words are in docs/llm.md, "Metric definitions".

- TTFT: time of the first content chunk received - sent. A content chunk is an SSE event carrying non-empty text
  (a role-only or empty first event is not a token). Queueing, prefill and the network are all included.
- ITL: the gaps between consecutive content chunks of a request; the gaps of all requests are pooled into one
  distribution. It is per chunk, as received: a server that sends several tokens per event gives fewer, longer
  gaps (vLLM's benchmark_serving does the same; GenAI-Perf's "inter-token latency" is our TPOT).
- TPOT: (e2e - TTFT) / (output tokens - 1), per request; a request of one token has none. The first token is
  excluded (LLMPerf's inter-token latency divides the whole e2e, TTFT included, by the output tokens).
- e2e: the last byte of the response - sent.
- output tokens: usage.completion_tokens when the server reports it, else the number of content chunks.
- output_tokens_per_s: output tokens of the completed requests / wall time, wall time being the first send to the
  last completion of a measured request (warm-up excluded).
- request_rate_rps: completed requests / wall time (achieved, not the rate asked for).
- goodput_rps: completed requests that meet every SLO given (TTFT <= --ttft and TPOT <= --itl; a one-token request
  has no TPOT and meets --itl) / wall time; null without any SLO. This is vLLM's --goodput definition: the ITL
  target is judged on the request's TPOT, not on its worst gap. (The DistServe paper calls goodput the highest rate
  at which a target share of requests meets the SLOs: the shares below, at several rates.) The share of requests
  meeting each SLO is over all measured requests: a failed request meets none.

Failed requests (HTTP status, SSE error event, timeout, connection, no content, unfinished when the drain ended)
are counted by kind and kept out of every latency percentile.

Percentiles p50/p90/p95/p99 (linear interpolation) with a 95 % bootstrap interval each, from
advisor.measure.LatencyStats (seeded): TTFT, TPOT and e2e resample blocks of consecutive requests (in send order:
neighbours share the server's queue), ITL resamples whole requests (the gaps of one request share its batch).
A percentile from fewer samples than advisor.measure.MIN_SAMPLES (e.g. p99 from under 500) is still given, with
its interval reaching the slowest sample, and `sufficient[p]` false: flagged, never silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

import advisor
from advisor.measure import MIN_SAMPLES, PERCENTILES, LatencyStats

SCHEMA = "advisor.bench_serve/v1"
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_WORK = 50_000_000  # samples x resamples at most: a 10-minute run's millions of ITL gaps use fewer draws
MIN_BOOTSTRAP_RESAMPLES = 200
UNFINISHED = "unfinished"  # the error kind of a request still in flight when the drain timeout ended the run


@dataclass(frozen=True)
class RequestRecord:
    """One measured request as the client saw it. Times are seconds on the run's clock (perf_counter - start)."""

    index: int
    scheduled_s: float | None  # when the arrival process asked for it; None: closed loop (sent when a user was free)
    sent_s: float
    chunk_times_s: tuple[float, ...]  # arrival of each content chunk
    end_s: float  # the last byte (or the failure)
    prompt_tokens_requested: int
    output_tokens_requested: int
    prompt_tokens_reported: int | None = None  # usage.prompt_tokens, when the server reports it
    output_tokens: int = 0  # usage.completion_tokens, else the content chunks
    tokens_from: str = "chunks"  # "usage" | "chunks"
    error_kind: str | None = None  # None: completed
    error_message: str = ""

    def __post_init__(self):
        if self.error_kind is None and not self.chunk_times_s:
            raise ValueError("a completed request has at least one content chunk")

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def ttft_ms(self) -> float:
        return (self.chunk_times_s[0] - self.sent_s) * 1000.0

    @property
    def e2e_ms(self) -> float:
        return (self.end_s - self.sent_s) * 1000.0

    @property
    def tpot_ms(self) -> float | None:
        """(e2e - TTFT) / (output tokens - 1); None for a request of one token."""
        if self.output_tokens < 2:
            return None
        return (self.e2e_ms - self.ttft_ms) / (self.output_tokens - 1)

    @property
    def itl_ms(self) -> list[float]:
        return list(np.diff(np.asarray(self.chunk_times_s)) * 1000.0)

    @property
    def send_lag_ms(self) -> float | None:
        """How late the client sent it against the arrival process (a busy client, or a --concurrency cap)."""
        return None if self.scheduled_s is None else (self.sent_s - self.scheduled_s) * 1000.0


def measured_wall_s(records: Sequence[RequestRecord]) -> float:
    """The first send to the last completion (to the last end when nothing completed)."""
    if not records:
        return 0.0
    ends = [r.end_s for r in records if r.ok] or [r.end_s for r in records]
    return max(ends) - min(r.sent_s for r in records)


def _resamples(samples: int) -> int:
    return int(min(BOOTSTRAP_RESAMPLES, max(MIN_BOOTSTRAP_RESAMPLES, BOOTSTRAP_WORK // max(samples, 1))))


def _stats(samples: Sequence[float], seed: int, blocks: Sequence[Sequence[float]] | None = None) -> dict:
    """One metric's --json block: percentiles, mean, their intervals, the sample count and the sufficiency flags."""
    if not len(samples):
        return {**{p: None for p in PERCENTILES}, "mean": None, "interval": {p: None for p in PERCENTILES},
                "samples": 0, "sufficient": {p: False for p in PERCENTILES}, "bootstrap_resamples": 0}
    resamples = _resamples(len(samples))
    stats = LatencyStats.from_samples(samples, resamples=resamples, seed=seed, blocks=blocks)
    return {**{p: stats.at(p) for p in PERCENTILES}, "mean": stats.mean,
            "interval": {p: list(stats.intervals[p]) for p in PERCENTILES}, "samples": stats.n,
            "sufficient": {p: stats.sufficient(p) for p in PERCENTILES}, "bootstrap_resamples": resamples}


def _rate(count: float, wall_s: float) -> float | None:
    return count / wall_s if wall_s > 0 else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarise(records: Sequence[RequestRecord], slo_ttft_ms: float | None = None, slo_itl_ms: float | None = None,
              wall_s: float | None = None, *, settings: Mapping | None = None, server: Mapping | None = None,
              started_at: str | None = None, seed: int = 0) -> dict:
    """The --json object (schema advisor.bench_serve/v1) of the measured requests; a pure function of its arguments.

    `wall_s` defaults to measured_wall_s(records). `settings`, `server` and `started_at` are copied in as given.
    """
    records = sorted(records, key=lambda r: r.sent_s)
    wall = measured_wall_s(records) if wall_s is None else float(wall_s)
    done = [r for r in records if r.ok]
    tpots = [r.tpot_ms for r in done if r.tpot_ms is not None]
    gaps_per_request = [r.itl_ms for r in done if len(r.chunk_times_s) > 1]
    meets_ttft = [slo_ttft_ms is None or r.ttft_ms <= slo_ttft_ms for r in done]
    meets_itl = [slo_itl_ms is None or r.tpot_ms is None or r.tpot_ms <= slo_itl_ms for r in done]
    good = sum(a and b for a, b in zip(meets_ttft, meets_itl))
    any_slo = slo_ttft_ms is not None or slo_itl_ms is not None
    share = (lambda n: n / len(records) if records else None)
    output_tokens = sum(r.output_tokens for r in done)
    lags = [r.send_lag_ms for r in records if r.send_lag_ms is not None]
    errors = [r for r in records if not r.ok]
    examples: dict[str, str] = {}
    for r in errors:
        examples.setdefault(r.error_kind, r.error_message[:300])
    reported = [r.prompt_tokens_reported for r in done if r.prompt_tokens_reported is not None]
    return {
        "schema": SCHEMA,
        "ttft_ms": _stats([r.ttft_ms for r in done], seed),
        "itl_ms": _stats([g for gaps in gaps_per_request for g in gaps], seed, blocks=gaps_per_request or None),
        "tpot_ms": _stats(tpots, seed),
        "e2e_ms": _stats([r.e2e_ms for r in done], seed),
        "requests": len(records),
        "completed": len(done),
        "errors": len(errors),
        "errors_by_kind": dict(Counter(r.error_kind for r in errors)),
        "error_examples": examples,
        "output_tokens": output_tokens,
        "output_tokens_per_s": _rate(output_tokens, wall),
        "request_rate_rps": _rate(len(done), wall),
        "goodput_rps": _rate(good, wall) if any_slo else None,
        "slo": {
            "ttft_ms": slo_ttft_ms, "itl_ms": slo_itl_ms,
            "definition": "a completed request meets the SLOs when TTFT <= ttft_ms and TPOT <= itl_ms "
                          "(vLLM's goodput); shares are over all measured requests",
            "meeting_ttft_share": share(sum(meets_ttft)) if slo_ttft_ms is not None else None,
            "meeting_itl_share": share(sum(meets_itl)) if slo_itl_ms is not None else None,
            "meeting_all_share": share(good) if any_slo else None,
        },
        "lengths": {
            "prompt_tokens_requested_mean": _mean([r.prompt_tokens_requested for r in done]),
            "prompt_tokens_reported_mean": _mean(reported),
            "prompt_tokens_reported_by": len(reported),
            "output_tokens_requested_mean": _mean([r.output_tokens_requested for r in done]),
            "output_tokens_mean": _mean([r.output_tokens for r in done]),
            "output_tokens_from_usage": sum(r.tokens_from == "usage" for r in done),
        },
        "client": {
            "send_lag_ms_p50": float(np.percentile(lags, 50)) if lags else None,
            "send_lag_ms_max": max(lags) if lags else None,
        },
        "min_samples_per_percentile": dict(MIN_SAMPLES),
        "settings": dict(settings or {}),
        "server": dict(server or {}),
        "started_at": started_at,
        "wall_s": wall,
        "advisor_version": advisor.__version__,
    }
