"""The one measurement protocol every backend uses: warm-up, timed repetitions, percentiles, a bootstrap
confidence interval, and the numerical check against the ONNX Runtime fp32 reference."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

PERCENTILES = ("p50", "p90", "p95", "p99")
MAX_KEPT_SAMPLES = 256  # samples kept in the report for distribution plots


# The fewest samples a percentile is reported from with its own interval: five samples beyond the quantile
# (n >= 5 / (1 - q)). Below it the percentile is still computed, but its interval reaches the slowest sample seen.
MIN_SAMPLES = {"p50": 10, "p90": 50, "p95": 100, "p99": 500}


@dataclass(frozen=True)
class HarnessSettings:
    warmup: int = 3
    min_iterations: int = 20
    min_time_s: float = 1.0
    max_time_s: float = 10.0
    max_iterations: int = 100_000
    confidence: float = 0.95
    bootstrap_resamples: int = 1000

    def for_percentile(self, percentile: str) -> HarnessSettings:
        """These settings, asking for enough samples to report `percentile` (still capped by max_time_s)."""
        return replace(self, min_iterations=max(self.min_iterations, MIN_SAMPLES[percentile]))

    def to_dict(self) -> dict:
        return {**asdict(self), "min_samples_per_percentile": dict(MIN_SAMPLES)}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one candidate in milliseconds, with a bootstrap interval per percentile.

    The bootstrap draws whole blocks of consecutive samples, not single samples: calls that follow each other
    share the machine's state (a scheduler tick, a neighbour's burst), so single draws would make the interval
    too narrow. A head-to-head gives its own blocks (one per round); a solo run is cut into blocks of about
    n^(1/3) calls. A percentile with fewer than MIN_SAMPLES samples gets an interval up to the slowest sample.
    """

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    n: int
    intervals: dict[str, tuple[float, float]]  # percentile -> (low, high) at the harness' confidence
    samples_ms: tuple[float, ...] = ()

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], confidence: float = 0.95, resamples: int = 1000,
                     seed: int = 0, blocks: Sequence[Sequence[float]] | None = None) -> LatencyStats:
        if blocks is not None:
            samples_ms = [v for block in blocks for v in block]
        data = np.asarray(samples_ms, dtype=np.float64)
        if data.size == 0:
            raise ValueError("no latency samples")
        if blocks is None:
            size = max(1, int(round(data.size ** (1 / 3))))
            blocks = [data[i:i + size] for i in range(0, data.size, size)]
        chunks = [np.asarray(b, dtype=np.float64) for b in blocks if len(b)]
        quantiles = np.array([50, 90, 95, 99], dtype=np.float64)
        rng = np.random.default_rng(seed)
        boot_q = np.empty((4, resamples))
        for i in range(resamples):
            picks = rng.integers(0, len(chunks), len(chunks))
            boot_q[:, i] = np.percentile(np.concatenate([chunks[j] for j in picks]), quantiles)
        alpha = (1 - confidence) / 2
        lows = np.quantile(boot_q, alpha, axis=1)
        highs = np.quantile(boot_q, 1 - alpha, axis=1)
        point = np.percentile(data, quantiles)
        intervals = {}
        for name, lo, hi in zip(PERCENTILES, lows, highs):
            if data.size < MIN_SAMPLES[name]:
                hi = max(hi, float(data.max()))
            intervals[name] = (float(lo), float(hi))
        kept = data if data.size <= MAX_KEPT_SAMPLES else data[np.linspace(0, data.size - 1, MAX_KEPT_SAMPLES,
                                                                           dtype=int)]
        return cls(
            p50=float(point[0]), p90=float(point[1]), p95=float(point[2]), p99=float(point[3]),
            mean=float(data.mean()), n=int(data.size), intervals=intervals,
            samples_ms=tuple(round(float(s), 4) for s in kept),
        )

    def sufficient(self, percentile: str) -> bool:
        """Whether there are at least MIN_SAMPLES samples for this percentile."""
        return self.n >= MIN_SAMPLES[percentile]

    def at(self, percentile: str) -> float:
        return float(getattr(self, percentile))

    def to_dict(self) -> dict:
        return {"p50": self.p50, "p90": self.p90, "p95": self.p95, "p99": self.p99, "mean": self.mean, "n": self.n,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "samples_ms": list(self.samples_ms),
                "sufficient": {p: self.sufficient(p) for p in PERCENTILES}}

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyStats:
        return cls(p50=data["p50"], p90=data["p90"], p95=data["p95"], p99=data["p99"], mean=data["mean"],
                   n=data["n"], intervals={k: tuple(v) for k, v in data.get("intervals", {}).items()},
                   samples_ms=tuple(data.get("samples_ms", ())))


HOPELESS_CALLS = 3


@dataclass(frozen=True)
class Timing:
    """Per-call latencies of one candidate; `stopped_early` when it was given up as hopelessly slow."""

    samples_ms: list[float]
    stopped_early: bool = False


def time_calls(run: Callable[[], object], settings: HarnessSettings, deadline: float | None = None,
               hopeless_ms: float | None = None) -> Timing:
    """Warm up, then call `run` until both the minimum count and time are reached (or a limit is hit).

    `deadline` (time.monotonic) caps the loop below max_time_s so a run never overshoots the overall budget; at
    least one timed call is always made. `hopeless_ms`: once three calls (warm-up included) were all slower than
    it, timing stops: a candidate that much slower than the best so far cannot win, and a 10 s-per-call build
    timed to the end would take the whole budget. The fastest call decides, not the median: noise and a slow
    first call only ever make calls slower.
    """
    seen: list[float] = []

    def hopeless() -> bool:
        return hopeless_ms is not None and len(seen) >= HOPELESS_CALLS and min(seen) > hopeless_ms

    for _ in range(settings.warmup):
        t0 = time.perf_counter()
        run()
        seen.append((time.perf_counter() - t0) * 1000.0)
        if hopeless():
            return Timing(seen, stopped_early=True)
    samples: list[float] = []
    start = time.monotonic()
    stop_at = start + settings.max_time_s
    if deadline is not None:
        stop_at = min(stop_at, deadline)
    while True:
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1000.0)
        seen.append(samples[-1])
        now = time.monotonic()
        if len(samples) < settings.min_iterations and hopeless():
            return Timing(samples, stopped_early=True)
        enough = len(samples) >= settings.min_iterations and now - start >= settings.min_time_s
        if enough or now >= stop_at or len(samples) >= settings.max_iterations:
            return Timing(samples)


QUIET_CPU_FRACTION = 0.05  # of one core: below this, no thread of ours is still spinning
QUIET_PROBE_S = 0.01
QUIET_MAX_WAIT_S = 1.0
BLOCK_MIN_S = 0.05  # a block lasts at least this long, so the quiet gaps cost a bounded share of the time


def wait_until_quiet(max_wait_s: float = QUIET_MAX_WAIT_S) -> float:
    """Sleep until this process burns (almost) no CPU: a runtime's thread pool keeps spinning for tens of
    milliseconds after a call (ONNX Runtime by default) and would steal the cores of whatever runs next. Waiting
    it out keeps every candidate's configuration exactly as deployed (unlike turning spinning off). Returns the
    seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(QUIET_PROBE_S)
        if time.process_time() - cpu0 < QUIET_CPU_FRACTION * (time.monotonic() - wall0):
            break
    return time.monotonic() - started


def interleaved_rounds(runs: Mapping[str, Callable[[], object]], settings: HarnessSettings, block: int = 10,
                       rewarm: int = 2) -> dict[str, list[list[float]]]:
    """Time several candidates in one process in alternating rounds, one block per candidate per round, so drift
    and noise hit them all alike; returns each candidate's blocks (round by round).

    Only one candidate runs at a time: before each block the process waits until no thread pool of the previous
    candidate is spinning any more (wait_until_quiet), and the first `rewarm` calls of a block, which wake the
    candidate's own pool, are discarded. A block lasts at least `block` calls and BLOCK_MIN_S.
    """
    for run in runs.values():
        for _ in range(settings.warmup):
            run()
    blocks: dict[str, list[list[float]]] = {key: [] for key in runs}
    start = time.monotonic()
    order = list(runs)
    while True:
        for key in order:
            run = runs[key]
            wait_until_quiet()
            for _ in range(rewarm):
                run()
            values: list[float] = []
            block_start = time.monotonic()
            while len(values) < block or time.monotonic() - block_start < BLOCK_MIN_S:
                t0 = time.perf_counter()
                run()
                values.append((time.perf_counter() - t0) * 1000.0)
            blocks[key].append(values)
        order = order[1:] + order[:1]  # no candidate always runs right after the same other one
        count = min(sum(len(b) for b in per) for per in blocks.values())
        elapsed = time.monotonic() - start
        if (count >= settings.min_iterations and elapsed >= settings.min_time_s) or elapsed >= settings.max_time_s:
            return blocks


def interleaved_samples(runs: Mapping[str, Callable[[], object]], settings: HarnessSettings,
                        block: int = 10, rewarm: int = 2) -> dict[str, list[float]]:
    """interleaved_rounds, flattened."""
    return {key: [v for values in blocks for v in values]
            for key, blocks in interleaved_rounds(runs, settings, block, rewarm).items()}


@dataclass(frozen=True)
class Difference:
    """A challenger's percentile minus the baseline's, from the same head-to-head, with its interval."""

    percentile: str
    diff_ms: float
    interval_ms: tuple[float, float]

    @property
    def better(self) -> bool:
        """Faster beyond the interval of the difference: anything less is a tie, and ties go to the baseline."""
        return self.interval_ms[1] < 0

    @property
    def worse(self) -> bool:
        return self.interval_ms[0] > 0

    def to_dict(self) -> dict:
        return {"percentile": self.percentile, "diff_ms": self.diff_ms, "interval_ms": list(self.interval_ms),
                "better": self.better, "worse": self.worse}


def paired_difference(challenger: Sequence[Sequence[float]], baseline: Sequence[Sequence[float]],
                      percentile: str, confidence: float = 0.95, resamples: int = 1000,
                      seed: int = 0) -> Difference:
    """Bootstrap over rounds: each resample draws whole rounds (the challenger's and the baseline's blocks of the
    same round together), so slow phases of the machine and the tick-correlated samples within a block are never
    treated as independent draws."""
    rounds = min(len(challenger), len(baseline))
    q = _QUANTILE[percentile]
    point = float(np.percentile(_flat(challenger), q) - np.percentile(_flat(baseline), q))
    if rounds < MIN_PAIRED_ROUNDS:
        # a bootstrap over one or two rounds cannot see round-to-round variation (one round: every resample is
        # that round, a zero-width interval): no decision, an interval as wide as every sample's spread
        pooled = np.concatenate([_flat(challenger), _flat(baseline)])
        spread = float(pooled.max() - pooled.min())
        return Difference(percentile, point, (-spread, spread))
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for i in range(resamples):
        picks = rng.integers(0, rounds, rounds)
        diffs[i] = (np.percentile(_flat(challenger[j] for j in picks), q)
                    - np.percentile(_flat(baseline[j] for j in picks), q))
    alpha = (1 - confidence) / 2
    return Difference(percentile, point, (float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))))


_QUANTILE = {"p50": 50, "p90": 90, "p95": 95, "p99": 99}
MIN_PAIRED_ROUNDS = 3  # rounds a head-to-head needs before paired_difference may call a winner


def _flat(blocks) -> np.ndarray:
    return np.concatenate([np.asarray(b, dtype=np.float64) for b in blocks])


@dataclass(frozen=True)
class NumericCheck:
    max_abs_error: float
    max_rel_error: float
    passed: bool
    tolerance: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare_outputs(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray], tolerance: float) -> NumericCheck:
    """Max absolute and relative error over all outputs; passes when the relative error (scaled by the
    reference's magnitude, so near-zero values do not explode it) is within `tolerance`."""
    max_abs = 0.0
    max_rel = 0.0
    if len(outputs) != len(reference):
        return NumericCheck(float("inf"), float("inf"), False, tolerance)
    for out, ref in zip(outputs, reference):
        out = np.asarray(out)
        ref = np.asarray(ref)
        if out.shape != ref.shape:
            return NumericCheck(float("inf"), float("inf"), False, tolerance)
        if not np.issubdtype(ref.dtype, np.number) or ref.size == 0:
            continue
        diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        if not np.all(np.isfinite(diff)):
            return NumericCheck(float("inf"), float("inf"), False, tolerance)
        scale = max(float(np.max(np.abs(ref))), 1e-6)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.max()) / scale)
    return NumericCheck(max_abs, max_rel, max_rel <= tolerance, tolerance)
