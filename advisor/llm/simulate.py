"""Discrete-event simulation of one continuous-batching engine replica (vLLM's V1 scheduler) under a workload.

Scheduling, step by step (vLLM v1/core/sched/scheduler.py, `schedule()`; docs.vllm.ai "Optimization and Tuning",
chunked prefill):
- a step has a budget of max_num_batched_tokens; running sequences in decode take one token each first, then the
  running sequences still in prefill take the next chunk of their prompt, then waiting requests are admitted in
  arrival order (first come, first served; the queue head blocks the rest) while fewer than max_num_seqs run, the
  budget lasts and the KV cache has room for the chunk. Without chunked prefill a prompt must fit the budget whole;
- the KV cache holds kv_capacity_tokens tokens (counted in tokens, not 16-token blocks); a sequence holds its
  prompt and generated tokens and frees them when it finishes;
- a request's first token is emitted at the end of the step that runs its last prefill chunk; each later step emits
  one token per sequence in decode;
- preemption: when the decode tokens of a step do not fit the KV cache, the most recently admitted running sequence
  is preempted (vLLM V1 pops the last of its running list), freeing its KV, and no waiting request is admitted in
  that step; the preempted one goes back to the head of the waiting queue and is recomputed (vLLM V1 preempts by
  recomputation only): prompt plus the tokens generated so far are prefilled again, the end of which emits its next
  token. Running prefills that find no KV room wait (or, when nothing else can run, the most recent one is
  preempted);
- prefix caching: the workload's shared prefix (shared_prefix_fraction x the mean prompt, one common system prompt)
  is assumed cached: never computed, and held once in the KV cache instead of per sequence.
The step time comes from advisor.llm.perf.StepModel. Between events (an arrival that can be admitted, a completion,
the KV cache filling) decode-only steps differ only in their context, which grows by one token per sequence and
step: each roofline term is then linear in the step index, so a run of them is summed in closed form (at most two
arithmetic series, as the max switches side at most once). The result is the same as stepping one by one.

Metrics (docs/llm.md, "Metrics"), over the requests arriving after the warm-up (the first min(60 s, 10 %) of the
run, unless fewer than 200 requests would remain):
- TTFT  = time of the first token - arrival;
- ITL   = the gaps between consecutive tokens of a request, all gaps of all requests pooled;
- TPOT  = (E2E - TTFT) / (output tokens - 1), per request with more than one output token;
- E2E   = time of the last token - arrival;
- goodput = requests per second that meet every SLO given (TTFT, TPOT against the ITL target, E2E);
- output_tokens_per_s = tokens emitted after the warm-up and before the arrivals end, per second.
A run is unstable when the queue of waiting requests grows without bound: its mean over the last quarter of the
arrivals exceeds that over the quarter before by more than 5 % of the requests that arrived meanwhile (the net
growth rate is over 5 % of the arrival rate) and by at least one request. An unstable run stops at the end of the
arrivals; the requests it has not finished are counted as not completed.

Intervals: each percentile carries [lo, hi] = [2.5 % bootstrap quantile of the run with every step time x the
efficiency band's low end, 97.5 % bootstrap quantile of the run with every step time x its high end]. The three runs
share their random draws (arrivals and lengths), so they differ only in speed; queueing makes the tail move more
than in proportion, which scaling a nominal result could not show. The bootstrap is over requests (TTFT, TPOT,
E2E) or over steps (ITL), in blocks of consecutive ones (about sqrt(n) per block) because neighbours share a queue;
it is not over seeds. A pessimistic run whose queue grows without bound has an unbounded upper end (inf; null in
to_dict()).
"""

from __future__ import annotations

import contextlib
import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from advisor.llm.perf import StepModel
from advisor.llm.workload import Workload

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
BOOTSTRAP_RESAMPLES = 200
WARMUP_MAX_S = 60.0
WARMUP_FRACTION = 0.1
WARMUP_MIN_KEPT = 200
GROWTH_FRACTION = 0.05  # unstable: the waiting queue grows at more than 5 % of the arrival rate
HISTOGRAM_BINS = 2048  # log-spaced bins of the bootstrap (the point estimates are exact)


class SimulationError(ValueError):
    """An engine setting or SLO a user can fix; the message is one line."""


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_capacity_tokens: int
    chunked_prefill: bool = True

    def __post_init__(self):
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.kv_capacity_tokens < 1:
            raise SimulationError(f"max_num_seqs, max_num_batched_tokens and kv_capacity_tokens must be at least 1, "
                                  f"got {self.max_num_seqs}, {self.max_num_batched_tokens}, "
                                  f"{self.kv_capacity_tokens}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            # vLLM refuses this too: a step could not hold one decode token per running sequence
            raise SimulationError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                                  f"max_num_seqs ({self.max_num_seqs})")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Slos:
    ttft_ms: float | None
    itl_ms: float | None
    e2e_ms: float | None
    percentile: str  # p50 | p90 | p95 | p99

    def __post_init__(self):
        if self.percentile not in PERCENTILES:
            raise SimulationError(f"percentile must be one of {', '.join(PERCENTILES)}, got {self.percentile!r}")
        for name in ("ttft_ms", "itl_ms", "e2e_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise SimulationError(f"the {name} SLO must be positive, got {value}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _finite(value):
    return float(value) if value is not None and math.isfinite(value) else None


@dataclass(frozen=True)
class SimResult:
    ttft_ms: dict  # {"p50", "p90", "p95", "p99"} plus "interval": {pXX: [lo, hi]}
    itl_ms: dict
    tpot_ms: dict
    e2e_ms: dict
    requests: int
    completed: int
    output_tokens_per_s: float
    goodput_rps: float  # requests per second meeting every SLO given to simulate() (all completed ones if none)
    stable: bool  # False when the queue grows without bound (arrivals > service)
    stable_pessimistic: bool = True  # the same for the run at the slow end of the efficiency band
    preemptions: int = 0
    rate_rps: float = 0.0
    duration_s: float = 0.0
    warmup_s: float = 0.0
    efficiency_source: str = ""
    interval_method: str = ("efficiency band runs x block bootstrap over requests (TTFT, TPOT, E2E) and over steps "
                            "(ITL)")
    # per-request figures of the nominal run, for goodput at other SLOs (not serialised)
    _ttft: np.ndarray = field(default=None, repr=False, compare=False)
    _tpot: np.ndarray = field(default=None, repr=False, compare=False)
    _e2e: np.ndarray = field(default=None, repr=False, compare=False)
    _window_s: float = field(default=1.0, repr=False, compare=False)

    def meets(self, slos: Slos) -> bool:
        """Every SLO at its percentile, judged on the pessimistic end of the interval; never when the queue grows
        without bound."""
        if not (self.stable and self.stable_pessimistic) or self.completed == 0:
            return False
        for target, metric in ((slos.ttft_ms, self.ttft_ms), (slos.itl_ms, self.itl_ms), (slos.e2e_ms, self.e2e_ms)):
            if target is None:
                continue
            high = metric["interval"][slos.percentile][1]
            if not (high <= target):  # also False for nan
                return False
        return True

    def margin(self, slos: Slos) -> dict:
        """SLO minus the pessimistic end, per SLO given (positive: headroom; negative: by how much it misses)."""
        out = {}
        for name, target, metric in (("ttft_ms", slos.ttft_ms, self.ttft_ms), ("itl_ms", slos.itl_ms, self.itl_ms),
                                     ("e2e_ms", slos.e2e_ms, self.e2e_ms)):
            if target is not None:
                out[name] = target - metric["interval"][slos.percentile][1]
        return out

    def goodput_for(self, slos: Slos) -> float:
        """Requests per second (after the warm-up) that met every SLO, each judged on its own TTFT, TPOT, E2E."""
        if self._ttft is None:
            return self.goodput_rps
        return _goodput(self._ttft, self._tpot, self._e2e, slos, self._window_s)

    def to_dict(self) -> dict:
        def metric(d: dict) -> dict:
            return {**{p: _finite(d[p]) for p in PERCENTILES},
                    "interval": {p: [_finite(v) for v in d["interval"][p]] for p in PERCENTILES}}

        return {"ttft_ms": metric(self.ttft_ms), "itl_ms": metric(self.itl_ms), "tpot_ms": metric(self.tpot_ms),
                "e2e_ms": metric(self.e2e_ms), "requests": self.requests, "completed": self.completed,
                "output_tokens_per_s": self.output_tokens_per_s, "goodput_rps": self.goodput_rps,
                "stable": self.stable, "stable_pessimistic": self.stable_pessimistic,
                "preemptions": self.preemptions, "rate_rps": self.rate_rps, "duration_s": self.duration_s,
                "warmup_s": self.warmup_s, "efficiency_source": self.efficiency_source,
                "interval_method": self.interval_method}

    @classmethod
    def from_dict(cls, data: dict) -> SimResult:
        """The inverse of to_dict (without the per-request figures): null percentiles read back as nan, null upper
        ends as unbounded."""
        def metric(d: dict) -> dict:
            return {**{p: math.nan if d[p] is None else float(d[p]) for p in PERCENTILES},
                    "interval": {p: [math.nan if lo is None else float(lo), math.inf if hi is None else float(hi)]
                                 for p, (lo, hi) in d["interval"].items()}}

        names = {k for k in cls.__dataclass_fields__ if not k.startswith("_")}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            values[key] = metric(data[key])
        return cls(**values)


def _goodput(ttft, tpot, e2e, slos: Slos | None, window_s: float) -> float:
    ok = np.isfinite(e2e)
    if slos is not None:
        if slos.ttft_ms is not None:
            ok &= ttft <= slos.ttft_ms
        if slos.itl_ms is not None:
            ok &= ~(tpot > slos.itl_ms)  # one-token requests have no TPOT (nan) and pass
        if slos.e2e_ms is not None:
            ok &= e2e <= slos.e2e_ms
    return float(np.count_nonzero(ok)) / window_s


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class _Trace:
    """What one run leaves: per-request times (s, nan when never reached) and per-step ITL records."""

    arrival: np.ndarray
    output: np.ndarray
    first: np.ndarray
    finish: np.ndarray
    step_start: np.ndarray  # start of each step that emitted decode tokens
    step_ms: np.ndarray  # its duration = the ITL gap of every sequence it advanced
    step_weight: np.ndarray  # how many sequences it advanced
    extra_gaps: np.ndarray  # (time, gap_ms) of tokens after a preemption's recomputation
    stable: bool
    preemptions: int
    end_s: float


def _run(step: StepModel, workload: Workload, engine: EngineConfig, arrival: np.ndarray, prompt: np.ndarray,
         output: np.ndarray, scale: float, max_run: int = 1 << 30) -> _Trace:
    """One run with every step time x `scale`. `max_run` caps a run of decode steps summed at once (1: step by step,
    which the tests compare against)."""
    n = arrival.size
    duration = workload.duration_s
    shared = int(workload.shared_prefix_fraction * workload.prompt_tokens.mean)
    capacity = engine.kv_capacity_tokens - shared  # the shared prefix is held once
    budget_max = engine.max_num_batched_tokens
    max_seqs = engine.max_num_seqs
    chunked = engine.chunked_prefill
    step_ms = step.step_ms
    arr = arrival.tolist()
    prm = prompt.tolist()
    out = output.tolist()
    cached = [min(shared, p - 1) for p in prm]  # prefix tokens served from the cache, per request

    target = list(prm)  # tokens the current prefill must reach (prompt, or prompt + generated on recompute)
    computed = list(cached)
    generated = [0] * n
    first = [math.nan] * n
    finish = [math.nan] * n
    admitted_at = [math.inf] * n  # first admission, for the queue-growth test
    last_token = [0.0] * n
    # decode bookkeeping: a sequence joins decode at counter value d_join with its context and KV then
    d_join = [0] * n
    ctx_join = [0] * n
    kv_join = [0] * n
    epoch = [0] * n

    waiting: deque[int] = deque()
    running: dict[int, None] = {}  # admission order: the last is the first preempted
    partial: dict[int, None] = {}  # running sequences still in prefill, admission order
    decoding: set[int] = set()
    heap: list[tuple[int, int, int]] = []  # (decode counter at which it finishes, epoch, request)
    n_dec = 0
    dec_ctx = 0  # sum of attended contexts of the sequences in decode, for their next step
    kv_used = 0
    counter = 0  # decode steps so far
    t = 0.0
    nxt = 0
    preemptions = 0
    records: list[tuple[float, float, float, int, int]] = []  # decode steps: (start, first s, slope s, count, seqs)
    lines: dict[int, tuple] = {}
    extra: list[tuple[float, float]] = []
    stable = True
    checked = False

    def preempt_last() -> None:
        nonlocal n_dec, dec_ctx, kv_used, preemptions
        rid, _ = running.popitem()
        preemptions += 1
        if rid in decoding:
            decoding.discard(rid)
            steps = counter - d_join[rid]
            n_dec -= 1
            dec_ctx -= ctx_join[rid] + steps
            kv_used -= kv_join[rid] + steps
            generated[rid] += steps
            epoch[rid] += 1
            last_token[rid] = t
        else:
            partial.pop(rid, None)
            kv_used -= computed[rid] - cached[rid]
        target[rid] = prm[rid] + generated[rid]
        computed[rid] = cached[rid]
        waiting.appendleft(rid)

    def complete(rid: int, when: float) -> None:
        finish[rid] = when
        del running[rid]

    while True:
        while nxt < n and arr[nxt] <= t:
            waiting.append(nxt)
            nxt += 1
        if not running and not waiting:
            if nxt >= n:
                break
            t = arr[nxt]
            continue
        if not checked and t >= duration:
            checked = True
            stable = _queue_stable(arrival, np.asarray(admitted_at), workload)
            if not stable:
                break
        # decode tokens first: they must fit the KV cache, or the most recent sequences are preempted
        preempted_before = preemptions
        while n_dec and kv_used + n_dec > capacity:
            preempt_last()
        budget = budget_max - n_dec
        free = capacity - kv_used - n_dec

        if n_dec and not partial and (not waiting or len(running) >= max_seqs):
            # a run of decode-only steps until the next event, summed in closed form (_decode_run)
            while heap and (heap[0][1] != epoch[heap[0][2]] or heap[0][2] not in decoding):
                heapq.heappop(heap)
            k = min(heap[0][0] - counter, (capacity - kv_used) // n_dec, max_run)
            if n_dec not in lines:
                lines[n_dec] = step.decode_line(n_dec)
            segments = _decode_run(lines[n_dec], n_dec, dec_ctx, k, scale / 1e3)
            if not waiting and nxt < n:
                # stop before the first step that starts at or after the next arrival (it could be admitted then)
                k = min(k, _ends_before(segments, arr[nxt] - t) + 1)
                segments = _truncate(segments, k)
            for first_s, slope_s, count in segments:
                records.append((t, first_s, slope_s, count, n_dec))
                t += count * first_s + slope_s * count * (count - 1) / 2
            counter += k
            kv_used += n_dec * k
            dec_ctx += n_dec * k
            while heap and heap[0][0] <= counter:
                _, ep, rid = heapq.heappop(heap)
                if ep == epoch[rid] and rid in decoding:
                    decoding.discard(rid)
                    steps = counter - d_join[rid]
                    n_dec -= 1
                    dec_ctx -= ctx_join[rid] + steps
                    kv_used -= kv_join[rid] + steps
                    complete(rid, t)
            continue

        # one step with prefill work: chunks of running prefills, then admissions
        chunks: list[tuple[int, int]] = []
        prefill = 0
        attended = 0.0
        for rid in partial:
            if budget <= 0 or free <= 0:
                break
            k = min(target[rid] - computed[rid], budget, free)
            chunks.append((rid, k))
            attended += k * computed[rid] + k * (k + 1) / 2
            prefill += k
            budget -= k
            free -= k
        # vLLM V1 admits no waiting request in a step that had to preempt
        while preemptions == preempted_before and waiting and len(running) < max_seqs and budget > 0 and free > 0:
            rid = waiting[0]
            need = target[rid] - computed[rid]
            if not chunked and need <= budget_max and need > min(budget, free):
                break  # without chunked prefill a prompt runs whole (one longer than any budget is chunked)
            k = min(need, budget, free)
            waiting.popleft()
            running[rid] = None
            partial[rid] = None
            if admitted_at[rid] == math.inf:
                admitted_at[rid] = t
            chunks.append((rid, k))
            attended += k * computed[rid] + k * (k + 1) / 2
            prefill += k
            budget -= k
            free -= k
        if not n_dec and not prefill:
            if running:  # the KV cache is full of unfinished prefills: free the most recent one
                preempt_last()
                continue
            if preemptions != preempted_before:
                continue  # admissions resume in the next step
            raise SimulationError("a request can never be scheduled: raise max_num_batched_tokens or the KV capacity")
        dt = step_ms(prefill, attended / prefill if prefill else 0.0, n_dec, dec_ctx) * scale / 1e3
        t_end = t + dt
        if n_dec:
            records.append((t, dt, 0.0, 1, n_dec))
            counter += 1
            kv_used += n_dec
            dec_ctx += n_dec
            while heap and heap[0][0] <= counter:
                _, ep, rid = heapq.heappop(heap)
                if ep == epoch[rid] and rid in decoding:
                    decoding.discard(rid)
                    steps = counter - d_join[rid]
                    n_dec -= 1
                    dec_ctx -= ctx_join[rid] + steps
                    kv_used -= kv_join[rid] + steps
                    complete(rid, t_end)
        for rid, k in chunks:
            computed[rid] += k
            kv_used += k
            if computed[rid] < target[rid]:
                continue
            del partial[rid]
            generated[rid] += 1  # the last chunk's logits give the next token
            if math.isnan(first[rid]):
                first[rid] = t_end
            else:
                extra.append((last_token[rid], (t_end - last_token[rid]) * 1e3))
            if generated[rid] >= out[rid]:
                kv_used -= computed[rid] - cached[rid]
                complete(rid, t_end)
                continue
            decoding.add(rid)
            n_dec += 1
            d_join[rid] = counter
            ctx_join[rid] = target[rid] + 1
            kv_join[rid] = target[rid] - cached[rid]
            dec_ctx += ctx_join[rid]
            heapq.heappush(heap, (counter + out[rid] - generated[rid], epoch[rid], rid))
        t = t_end

    if not checked:
        stable = _queue_stable(arrival, np.asarray(admitted_at), workload)
    step_start, step_s, step_weight = _expand(records)
    return _Trace(arrival, output, np.asarray(first), np.asarray(finish), step_start, step_s * 1e3, step_weight,
                  np.asarray(extra, dtype=np.float64).reshape(-1, 2), stable, preemptions, t)


def _decode_run(line: tuple, n: int, context: float, k: int, scale: float) -> list[tuple[float, float, int]]:
    """k decode steps of n sequences from a context total `context` (growing by n a step) as at most two
    arithmetic segments (first step time, increment, count), in seconds x scale: each roofline term is linear in
    the step index and their max switches side at most once."""
    a_c, b_c, a_m, b_m, fixed = line
    c0, dc = a_c + b_c * context, b_c * n
    m0, dm = a_m + b_m * context, b_m * n

    def segment(compute: bool, j0: int, count: int) -> tuple[float, float, int]:
        if compute:
            return ((c0 + dc * j0 + fixed) * scale, dc * scale, count)
        return ((m0 + dm * j0 + fixed) * scale, dm * scale, count)

    starts_compute = c0 > m0  # step_ms takes compute only when strictly larger; equal lines give the same time
    ends_compute = c0 + dc * (k - 1) > m0 + dm * (k - 1)
    if starts_compute == ends_compute or k == 1:
        return [segment(starts_compute, 0, k)]
    switch = min(k - 1, max(1, int(math.floor((m0 - c0) / (dc - dm))) + 1))
    # the first index at which the other term leads (guard the float division by one step either way)
    while switch > 1 and (c0 + dc * (switch - 1) > m0 + dm * (switch - 1)) != starts_compute:
        switch -= 1
    while switch < k - 1 and (c0 + dc * switch > m0 + dm * switch) == starts_compute:
        switch += 1
    return [segment(starts_compute, 0, switch), segment(ends_compute, switch, k - switch)]


def _ends_before(segments: list[tuple[float, float, int]], gap: float) -> int:
    """How many of the steps end strictly before `gap` seconds from the start of the run."""
    done, total = 0, 0.0
    for first, slope, count in segments:
        whole = count * first + slope * count * (count - 1) / 2
        if total + whole < gap:
            total += whole
            done += count
            continue
        rest = gap - total
        # largest u in [0, count) with u x first + slope x u (u - 1) / 2 < rest: the quadratic's root, then exact
        if slope > 0:
            b = first - slope / 2
            u = int(math.floor((-b + math.sqrt(b * b + 2 * slope * rest)) / slope))
        else:
            u = int(math.floor(rest / first))
        u = max(0, min(count, u))
        while u > 0 and u * first + slope * u * (u - 1) / 2 >= rest:
            u -= 1
        while u < count and (u + 1) * first + slope * (u + 1) * u / 2 < rest:
            u += 1
        return done + u
    return done


def _truncate(segments: list[tuple[float, float, int]], k: int) -> list[tuple[float, float, int]]:
    out = []
    for first, slope, count in segments:
        if k <= 0:
            break
        out.append((first, slope, min(count, k)))
        k -= count
    return out


def _expand(records: list[tuple[float, float, float, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every decode step's start (s), duration (s) and sequences advanced, from the run records, vectorised."""
    if not records:
        empty = np.zeros(0)
        return empty, empty, empty
    start, first, slope, count, seqs = (np.asarray(column) for column in zip(*records))
    count = count.astype(np.int64)
    offsets = np.cumsum(count) - count
    j = np.arange(int(count.sum())) - np.repeat(offsets, count)
    first_r, slope_r = np.repeat(first, count), np.repeat(slope, count)
    durations = first_r + slope_r * j
    starts = np.repeat(start, count) + j * first_r + slope_r * j * (j - 1) / 2
    return starts, durations, np.repeat(seqs, count).astype(np.float64)


def _queue_stable(arrival: np.ndarray, admitted_at: np.ndarray, workload: Workload) -> bool:
    """False when the waiting queue grows at more than GROWTH_FRACTION of the arrival rate over the second half of
    the arrivals (module docstring). The queue seen by request i on arrival = earlier requests not yet admitted."""
    duration = workload.duration_s
    if arrival.size < 8:
        return True
    admitted = np.sort(admitted_at)
    queue = np.arange(arrival.size) - np.searchsorted(admitted, arrival, side="right")
    q2 = queue[(arrival >= duration / 2) & (arrival < 3 * duration / 4)]
    q3 = queue[arrival >= 3 * duration / 4]
    if q2.size == 0 or q3.size == 0:
        return True
    growth = float(q3.mean() - q2.mean())
    return not (growth > max(1.0, GROWTH_FRACTION * workload.rate_rps * duration / 4))


# ------------------------------------------------------------------------------------------------ statistics


def _block_bootstrap(values: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap percentiles (resamples x 4) of weighted values given in time order: non-overlapping blocks of about
    sqrt(n) consecutive values are drawn with replacement. Each block is reduced once to a histogram over
    HISTOGRAM_BINS log-spaced bins, so a resample is a sum of block histograms, not a sort; a percentile is read
    at its bin's geometric centre (within half a bin, 0.1 % for a 100x spread, of the exact figure)."""
    q = np.array(list(PERCENTILES.values())) / 100.0
    lo, hi = float(values.min()), float(values.max())
    if values.size < 2 or hi <= lo * (1 + 1e-12):
        return np.tile(_weighted_percentiles(values, weights), (BOOTSTRAP_RESAMPLES, 1))
    edges = np.geomspace(lo, hi, HISTOGRAM_BINS + 1)
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, HISTOGRAM_BINS - 1)
    size = max(1, int(round(math.sqrt(values.size))))
    block = np.arange(values.size) // size
    nblocks = int(block[-1]) + 1
    hist = np.bincount(block * HISTOGRAM_BINS + bins, weights=weights,
                       minlength=nblocks * HISTOGRAM_BINS).reshape(nblocks, HISTOGRAM_BINS)
    counts = rng.multinomial(nblocks, np.full(nblocks, 1.0 / nblocks), size=BOOTSTRAP_RESAMPLES)
    cum = np.cumsum(counts @ hist, axis=1)
    at = np.array([np.searchsorted(row, q * row[-1], side="left") for row in cum])
    at = np.minimum(at, HISTOGRAM_BINS - 1)
    return np.sqrt(edges[at] * edges[at + 1])


def _request_percentiles(values: np.ndarray, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Point percentiles (linear interpolation) and, given a generator, the bootstrap percentiles (resamples x 4)
    of per-request values in arrival order (nan dropped)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        nan = np.full(len(PERCENTILES), np.nan)
        return nan, np.tile(nan, (BOOTSTRAP_RESAMPLES, 1))
    point = np.percentile(values, list(PERCENTILES.values()))
    if rng is None:
        return point, None
    return point, _block_bootstrap(values, np.ones(values.size), rng)


def _weighted_percentiles(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The smallest value whose cumulative weight reaches q % of the total, for each percentile."""
    if values.size == 0:
        return np.full(len(PERCENTILES), np.nan)
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    at = np.searchsorted(cum, np.array(list(PERCENTILES.values())) / 100.0 * cum[-1], side="left")
    return values[order][np.minimum(at, values.size - 1)]


def _itl_percentiles(trace: _Trace, warmup: float, rng: np.random.Generator | None):
    """Pooled ITL: each decode step's duration weighted by the sequences it advanced, plus the gaps across a
    preemption's recomputation; the bootstrap is over blocks of consecutive steps."""
    keep = trace.step_start >= warmup
    late = trace.extra_gaps[:, 0] >= warmup
    times = np.concatenate([trace.step_start[keep], trace.extra_gaps[late, 0]])
    values = np.concatenate([trace.step_ms[keep], trace.extra_gaps[late, 1]])
    weights = np.concatenate([trace.step_weight[keep], np.ones(int(np.count_nonzero(late)))])
    point = _weighted_percentiles(values, weights)
    if rng is None:
        return point, None
    if values.size == 0:
        return point, np.tile(point, (BOOTSTRAP_RESAMPLES, 1))
    order = np.argsort(times, kind="stable")
    return point, _block_bootstrap(values[order], weights[order], rng)


def _metrics(trace: _Trace, warmup: float, seed: int, bootstrap: bool = True) -> dict:
    """Per metric: point percentiles (4,) and bootstrap percentiles (resamples x 4, None without bootstrap)."""
    rng = np.random.default_rng(seed + 7919) if bootstrap else None
    include = trace.arrival >= warmup
    ttft = (trace.first - trace.arrival)[include] * 1e3
    e2e = (trace.finish - trace.arrival)[include] * 1e3
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(trace.output[include] > 1, (e2e - ttft) / (trace.output[include] - 1), np.nan)
    return {"ttft_ms": _request_percentiles(ttft, rng), "tpot_ms": _request_percentiles(tpot, rng),
            "e2e_ms": _request_percentiles(e2e, rng), "itl_ms": _itl_percentiles(trace, warmup, rng),
            "_per_request": (ttft, tpot, e2e)}


# ------------------------------------------------------------------------------------------------ public API


def _draws(workload: Workload, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrivals and lengths from one generator in a fixed order: the same seed gives the same requests at every
    rate (the Poisson gaps are stretched) and in every run of the band."""
    rng = np.random.default_rng(seed)
    arrival = workload.arrival_times(rng)
    n = arrival.size
    length_rng = np.random.default_rng([seed, 1])
    prompt = workload.prompt_tokens.sample(length_rng, n)
    output = workload.output_tokens.sample(length_rng, n)
    return arrival, prompt, output


def _check(workload: Workload, engine: EngineConfig) -> None:
    shared = int(workload.shared_prefix_fraction * workload.prompt_tokens.mean)
    longest = workload.prompt_tokens.max + workload.output_tokens.max
    if longest - min(shared, workload.prompt_tokens.max - 1) + shared > engine.kv_capacity_tokens:
        raise SimulationError(f"a request of {longest} tokens (prompt + output) does not fit the KV cache of "
                              f"{engine.kv_capacity_tokens} tokens: raise the KV capacity or shorten the requests")
    if not engine.chunked_prefill and workload.prompt_tokens.max > engine.max_num_batched_tokens:
        raise SimulationError(f"without chunked prefill a prompt of {workload.prompt_tokens.max} tokens needs "
                              f"max_num_batched_tokens >= {workload.prompt_tokens.max} (it is "
                              f"{engine.max_num_batched_tokens})")


def _warmup(workload: Workload, arrival: np.ndarray) -> float:
    """Requests arriving to the empty engine at the start see no queue: the first min(60 s, 10 %) are left out of
    the figures, unless fewer than WARMUP_MIN_KEPT requests would remain (a short run keeps them all)."""
    warmup = min(WARMUP_MAX_S, WARMUP_FRACTION * workload.duration_s)
    return warmup if np.count_nonzero(arrival >= warmup) >= WARMUP_MIN_KEPT else 0.0


def simulate(step: StepModel, workload: Workload, engine: EngineConfig, seed: int = 0, *,
             slos: Slos | None = None) -> SimResult:
    """Simulate `workload` on one engine replica; percentiles with intervals (module docstring). `slos` only
    decides which requests count towards goodput_rps (without it: every completed request)."""
    return _simulate(step, workload, engine, seed, slos, with_low=True)


def _one_blas_thread():
    """The bootstrap's small matrix products run ~8x faster on one BLAS thread than on a thread pool that other
    processes compete with (measured on 2 busy cores: 16 ms against 2 ms); threadpoolctl comes with scikit-learn."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _simulate(step: StepModel, workload: Workload, engine: EngineConfig, seed: int, slos: Slos | None,
              with_low: bool) -> SimResult:
    _check(workload, engine)
    arrival, prompt, output = _draws(workload, seed)
    band_lo, band_hi = step.efficiency.relative_interval
    warmup = _warmup(workload, arrival)
    nominal = _run(step, workload, engine, arrival, prompt, output, 1.0)
    high = _run(step, workload, engine, arrival, prompt, output, band_hi) if band_hi != 1.0 else nominal
    low = (_run(step, workload, engine, arrival, prompt, output, band_lo) if with_low and band_lo != 1.0
           else nominal)
    with _one_blas_thread():
        m_nom = _metrics(nominal, warmup, seed, bootstrap=low is nominal or high is nominal)
        m_lo = m_nom if low is nominal else _metrics(low, warmup, seed)
        m_hi = m_nom if high is nominal else _metrics(high, warmup, seed)

    def summary(name: str) -> dict:
        point = m_nom[name][0]
        lo = np.nanquantile(m_lo[name][1], 0.025, axis=0) if np.isfinite(m_lo[name][1]).any() else point
        hi = np.nanquantile(m_hi[name][1], 0.975, axis=0) if np.isfinite(m_hi[name][1]).any() else point
        if not high.stable:
            hi = np.full_like(point, np.inf)
        out = {p: float(point[i]) for i, p in enumerate(PERCENTILES)}
        out["interval"] = {p: [float(min(lo[i], point[i])), float(max(hi[i], point[i]))]
                           for i, p in enumerate(PERCENTILES)}
        return out

    window = max(min(workload.duration_s, nominal.end_s) - warmup, 1e-9)
    emitted = float(np.sum(nominal.step_weight[(nominal.step_start >= warmup)
                                               & (nominal.step_start < workload.duration_s)]))
    emitted += float(np.count_nonzero((nominal.first >= warmup) & (nominal.first < workload.duration_s)))
    ttft, tpot, e2e = m_nom["_per_request"]
    goodput_window = max(workload.duration_s - warmup, 1e-9)
    return SimResult(
        ttft_ms=summary("ttft_ms"), itl_ms=summary("itl_ms"), tpot_ms=summary("tpot_ms"), e2e_ms=summary("e2e_ms"),
        requests=int(arrival.size), completed=int(np.count_nonzero(np.isfinite(nominal.finish))),
        output_tokens_per_s=emitted / window, goodput_rps=_goodput(ttft, tpot, e2e, slos, goodput_window),
        stable=nominal.stable, stable_pessimistic=high.stable, preemptions=nominal.preemptions,
        rate_rps=workload.rate_rps, duration_s=workload.duration_s, warmup_s=warmup,
        efficiency_source=step.efficiency.source, _ttft=ttft, _tpot=tpot, _e2e=e2e, _window_s=goodput_window)


def capacity_rps(step: StepModel, workload: Workload, engine: EngineConfig) -> float:
    """A rough service rate of the replica (requests/s), for the search bracket of max_rate_meeting: the engine
    busy with as many sequences as both max_num_seqs and the KV cache allow, each request costing its prefill plus
    its share of the decode steps."""
    prompt, output = workload.prompt_tokens.mean, workload.output_tokens.mean
    shared = int(workload.shared_prefix_fraction * prompt)
    per_sequence = max(1.0, prompt - shared + output / 2)
    batch = max(1, min(engine.max_num_seqs, int(engine.kv_capacity_tokens / per_sequence)))
    context = prompt + output / 2
    prefill_ms = step.prefill_ms(max(1, round(prompt - shared)), engine.max_num_batched_tokens)
    per_request_ms = prefill_ms + max(0.0, output - 1) * step.decode_step_ms(batch, round(context)) / batch
    return 1000.0 / per_request_ms


PROBE_REQUESTS = 1500  # requests simulated per bisection probe
# the final answer simulates the workload's duration, but at most this many requests: a small model at thousands of
# requests/s would otherwise simulate millions (a 1-minute plan became 10); 12,000 requests give a p99 from ~120 tail
# requests, and its bootstrap interval says how well
FINAL_MAX_REQUESTS = 12_000
MIN_REQUESTS = 200  # at low rates the simulated duration is stretched to hold at least this many requests


def max_rate_meeting(step: StepModel, workload: Workload, engine: EngineConfig, slos: Slos, *,
                     lo: float | None = None, hi: float | None = None, seed: int = 0,
                     tolerance: float = 0.02) -> tuple[float, SimResult]:
    """The highest arrival rate (requests/s) whose simulation meets the SLOs at the pessimistic end of its
    intervals, by bisection on a log scale to `tolerance` (relative): for cost per token at full load.

    The bracket defaults to [capacity / 200, 1.5 x capacity] (capacity_rps), its upper end doubled (up to four
    times) while it still meets. Probes simulate at most PROBE_REQUESTS requests (a shorter duration) and skip the
    optimistic band run; the answer is then simulated over the whole workload (at most FINAL_MAX_REQUESTS requests,
    stretched to at least MIN_REQUESTS requests at low rates) and, should that miss (a longer run sees rarer bursts),
    stepped down by 5 % up to five times. Returns (0.0, the result at `lo`) when even `lo` misses.
    """
    capacity = capacity_rps(step, workload, engine)
    lo = capacity / 200.0 if lo is None else float(lo)
    hi = capacity * 1.5 if hi is None else float(hi)
    if not 0 < lo < hi:
        raise SimulationError(f"the rate bracket must satisfy 0 < lo < hi, got lo={lo}, hi={hi}")

    def at(rate: float, most: float = FINAL_MAX_REQUESTS) -> Workload:
        duration = max(min(workload.duration_s, most / rate), MIN_REQUESTS / rate)
        return Workload(workload.prompt_tokens, workload.output_tokens, rate, workload.arrival,
                        workload.shared_prefix_fraction, duration)

    def probe(rate: float) -> bool:
        return _simulate(step, at(rate, PROBE_REQUESTS), engine, seed, slos, with_low=False).meets(slos)

    if not probe(lo):
        return 0.0, simulate(step, at(lo), engine, seed, slos=slos)
    good, bad = lo, hi
    for _ in range(4):  # the rough capacity was too low: widen the bracket
        if not probe(bad):
            break
        good, bad = bad, bad * 2
    else:
        bad = good  # still meeting at 24x the rough capacity: take that, do not search further
    if good < bad:
        while bad / good > 1.0 + tolerance:
            middle = math.sqrt(good * bad)
            if probe(middle):
                good = middle
            else:
                bad = middle
    best = good
    result = simulate(step, at(best), engine, seed, slos=slos)
    for _ in range(5):
        if result.meets(slos) or best * 0.95 < lo:
            break
        best *= 0.95
        result = simulate(step, at(best), engine, seed, slos=slos)
    return best, result
