"""The one measurement protocol every backend uses: warm-up, timed repetitions, percentiles, a bootstrap
confidence interval, and the numerical check against the ONNX Runtime fp32 reference."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = ("p50", "p90", "p95", "p99")
MAX_KEPT_SAMPLES = 256  # samples kept in the report for distribution plots


@dataclass(frozen=True)
class HarnessSettings:
    warmup: int = 3
    min_iterations: int = 20
    min_time_s: float = 1.0
    max_time_s: float = 10.0
    max_iterations: int = 100_000
    confidence: float = 0.95
    bootstrap_resamples: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one candidate in milliseconds, with a bootstrap interval per percentile."""

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
                     seed: int = 0) -> LatencyStats:
        data = np.asarray(samples_ms, dtype=np.float64)
        if data.size == 0:
            raise ValueError("no latency samples")
        quantiles = np.array([50, 90, 95, 99], dtype=np.float64)
        rng = np.random.default_rng(seed)
        boot = rng.choice(data, size=(resamples, data.size), replace=True)
        boot_q = np.percentile(boot, quantiles, axis=1)  # (4, resamples)
        alpha = (1 - confidence) / 2
        lows = np.quantile(boot_q, alpha, axis=1)
        highs = np.quantile(boot_q, 1 - alpha, axis=1)
        point = np.percentile(data, quantiles)
        kept = data if data.size <= MAX_KEPT_SAMPLES else data[np.linspace(0, data.size - 1, MAX_KEPT_SAMPLES,
                                                                           dtype=int)]
        return cls(
            p50=float(point[0]), p90=float(point[1]), p95=float(point[2]), p99=float(point[3]),
            mean=float(data.mean()), n=int(data.size),
            intervals={name: (float(lo), float(hi)) for name, lo, hi in zip(PERCENTILES, lows, highs)},
            samples_ms=tuple(round(float(s), 4) for s in kept),
        )

    def at(self, percentile: str) -> float:
        return float(getattr(self, percentile))

    def to_dict(self) -> dict:
        return {"p50": self.p50, "p90": self.p90, "p95": self.p95, "p99": self.p99, "mean": self.mean, "n": self.n,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "samples_ms": list(self.samples_ms)}

    @classmethod
    def from_dict(cls, data: Mapping) -> LatencyStats:
        return cls(p50=data["p50"], p90=data["p90"], p95=data["p95"], p99=data["p99"], mean=data["mean"],
                   n=data["n"], intervals={k: tuple(v) for k, v in data.get("intervals", {}).items()},
                   samples_ms=tuple(data.get("samples_ms", ())))


def time_calls(run: Callable[[], object], settings: HarnessSettings, deadline: float | None = None) -> list[float]:
    """Warm up, then call `run` until both the minimum count and time are reached (or a limit is hit).

    Returns per-call latencies in milliseconds. `deadline` (time.monotonic) caps the loop below max_time_s
    so a run never overshoots the overall budget; at least one timed call is always made.
    """
    for _ in range(settings.warmup):
        run()
    samples: list[float] = []
    start = time.monotonic()
    stop_at = start + settings.max_time_s
    if deadline is not None:
        stop_at = min(stop_at, deadline)
    while True:
        t0 = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t0) * 1000.0)
        now = time.monotonic()
        enough = len(samples) >= settings.min_iterations and now - start >= settings.min_time_s
        if enough or now >= stop_at or len(samples) >= settings.max_iterations:
            return samples


def interleaved_samples(runs: Mapping[str, Callable[[], object]], settings: HarnessSettings,
                        block: int = 10, rewarm: int = 2) -> dict[str, list[float]]:
    """Time several candidates in one process in alternating blocks, so drift and noise hit them all alike.

    Blocks rather than strict round-robin: a runtime's thread pool keeps spinning for a moment after a call,
    which would steal cores from whichever candidate runs next. The first `rewarm` calls of each block are
    discarded for the same reason.
    """
    for run in runs.values():
        for _ in range(settings.warmup):
            run()
    samples: dict[str, list[float]] = {key: [] for key in runs}
    start = time.monotonic()
    while True:
        for key, run in runs.items():
            for index in range(block + rewarm):
                t0 = time.perf_counter()
                run()
                if index >= rewarm:
                    samples[key].append((time.perf_counter() - t0) * 1000.0)
        count = min(len(values) for values in samples.values())
        elapsed = time.monotonic() - start
        if (count >= settings.min_iterations and elapsed >= settings.min_time_s) or elapsed >= settings.max_time_s:
            return samples


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
