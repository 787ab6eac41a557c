"""Throughput sizing and memory fit: the arithmetic between latencies and money."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HOURS_PER_MONTH = 730.0
RUNTIME_OVERHEAD_GIB = 0.25  # a runtime's own code, allocator slack and thread stacks, beside weights and activations


def throughput_per_s(batch_size: int, mean_latency_ms: float) -> float:
    """Inferences per second of one instance running batches back to back."""
    return batch_size * 1000.0 / mean_latency_ms


def cost_per_million(price_per_hour: float, throughput: float) -> float:
    return price_per_hour / (throughput * 3600.0) * 1e6


def batching_window_ms(batch_size: int, qps: float | None) -> float:
    """Worst-case wait to fill a batch at the offered load: the first request waits for the other b-1."""
    if batch_size <= 1 or not qps:
        return 0.0
    return (batch_size - 1) / qps * 1000.0


def instances_needed(qps: float, throughput: float, utilisation: float) -> int:
    return max(1, math.ceil(qps / (throughput * utilisation)))


def monthly_cost(instances: int, price_per_hour: float) -> float:
    return instances * price_per_hour * HOURS_PER_MONTH


def memory_needed_gib(weight_bytes: int, activation_bytes: int, batch_size: int,
                      measured_peak_rss_mib: float | None = None) -> float:
    """Weights (held twice while a runtime builds its session), activations at the batch size, overhead; never
    less than what was measured."""
    estimate = (2 * weight_bytes + activation_bytes * batch_size) / 2**30 + RUNTIME_OVERHEAD_GIB
    if measured_peak_rss_mib:
        estimate = max(estimate, measured_peak_rss_mib / 1024)
    return round(estimate, 3)


# --- latency against batch size -------------------------------------------------------------------------------
# A candidate swept at several batch sizes (`--batch-sizes`, default 1,2,4,8) gets a straight line through its
# latencies: a fixed cost per call (dispatch, reading the weights) plus a cost per item in the batch. Sizing then
# also considers the batch sizes between the measured ones and, with a held-out check, up to EXTRAPOLATION_CAP
# times the largest one; a measured size always keeps its measured figures.

EXTRAPOLATION_CAP = 2  # fitted batch sizes reach at most 2x the largest measured one: the range the check tests
FITTED_PER_GAP = 15  # at most this many fitted sizes between two measured ones (all of them up to 16)
MIN_SIZES_TO_EXTRAPOLATE = 3  # a line through 2 points has no residuals to say how far it can be trusted
# A line is followed beyond the measured sizes only when it fits them (every measured point within 10 % of it) and
# predicts the largest one from the others within 15 %. A tail percentile of a sub-millisecond model is scheduler
# jitter more than batch cost: an MLP's p99s sat 0.91-1.17x their line, and the line put batch 16 at 3.8x what
# fresh processes measured there.
EXTRAPOLATION_FIT_BAND = 0.10
EXTRAPOLATION_HELD_OUT_BAND = 0.15


@dataclass(frozen=True)
class LinearFit:
    """latency_ms(b) = fixed_ms + per_item_ms * b, both terms non-negative (a bigger batch never runs faster)."""

    fixed_ms: float
    per_item_ms: float
    r2: float  # on the measured latencies
    residual_band: tuple[float, float]  # min and max of measured / fitted over the measured sizes; spans 1

    def at(self, batch_size: float) -> float:
        return self.fixed_ms + self.per_item_ms * batch_size

    def to_dict(self) -> dict:
        return {"fixed_ms": self.fixed_ms, "per_item_ms": self.per_item_ms, "r2": self.r2,
                "residual_band": list(self.residual_band)}


def fit_linear(batch_sizes: Sequence[int], latencies_ms: Sequence[float]) -> LinearFit:
    """Non-negative least squares on relative error (weights 1/latency^2), so batch 1 counts as much as batch 8."""
    from sklearn.linear_model import LinearRegression

    sizes = np.asarray(batch_sizes, dtype=float)
    measured = np.asarray(latencies_ms, dtype=float)
    design = np.column_stack([np.ones_like(sizes), sizes])
    coef = LinearRegression(positive=True, fit_intercept=False).fit(
        design, measured, sample_weight=1.0 / measured ** 2).coef_
    fitted = design @ coef
    total = float(np.sum((measured - measured.mean()) ** 2))
    residual = float(np.sum((measured - fitted) ** 2))
    r2 = 1.0 - residual / total if total > 0 else float(residual <= 1e-12 * float(np.sum(measured ** 2)))
    ratios = measured / np.maximum(fitted, 1e-12)
    return LinearFit(float(coef[0]), float(coef[1]), r2, (min(float(ratios.min()), 1.0), max(float(ratios.max()), 1.0)))


@dataclass(frozen=True)
class BatchPoint:
    """A candidate's figures at one batch size: the SLO percentile with its interval, and the mean (throughput)."""

    batch_size: int
    latency_ms: float
    interval_ms: tuple[float, float]
    mean_ms: float
    basis: str = "measured"  # measured | interpolated | extrapolated (from the BatchCurve)


@dataclass(frozen=True)
class BatchCurve:
    """Latency against batch size of one candidate on the machine it was measured on.

    Two lines of the same form: the SLO percentile (the SLO check and its interval) and the mean (throughput). A
    fitted figure's interval is the widest measured interval relative to its point, widened by the residual band
    (and, beyond the largest measured size, by how far off the line was when it predicted the largest size from
    the others); its mean is taken at the pessimistic end of the mean line's band, so a fleet is never sized on a
    throughput the measurements do not support.
    """

    latency: LinearFit
    mean: LinearFit
    measured_batch_sizes: tuple[int, ...]
    relative_interval: tuple[float, float]  # widest measured (low / point, high / point)
    extrapolation_ratios: tuple[float, float] | None  # largest size measured / predicted without it: latency, mean
    max_batch_size: int  # largest size a figure is given for (the largest measured without extrapolation)

    @classmethod
    def fit(cls, points: Sequence[BatchPoint]) -> BatchCurve | None:
        """None with fewer than two measured sizes: then only the measured size is used, as before fits."""
        points = sorted(points, key=lambda p: p.batch_size)
        if len(points) < 2:
            return None
        sizes = tuple(p.batch_size for p in points)
        latency = fit_linear(sizes, [p.latency_ms for p in points])
        mean = fit_linear(sizes, [p.mean_ms for p in points])
        relative = (min(min(p.interval_ms[0] / p.latency_ms for p in points), 1.0),
                    max(max(p.interval_ms[1] / p.latency_ms for p in points), 1.0))
        ratios, cap = None, sizes[-1]
        if len(points) >= MIN_SIZES_TO_EXTRAPOLATE:
            held, rest = points[-1], points[:-1]
            ratios = (held.latency_ms / fit_linear(sizes[:-1], [p.latency_ms for p in rest]).at(held.batch_size),
                      held.mean_ms / fit_linear(sizes[:-1], [p.mean_ms for p in rest]).at(held.batch_size))
            band_ok = all(abs(bound - 1.0) <= EXTRAPOLATION_FIT_BAND for bound in latency.residual_band)
            if band_ok and abs(ratios[0] - 1.0) <= EXTRAPOLATION_HELD_OUT_BAND:
                cap = EXTRAPOLATION_CAP * sizes[-1]
        return cls(latency, mean, sizes, relative, ratios, cap)

    def fitted_batch_sizes(self) -> tuple[int, ...]:
        """The unmeasured sizes sizing considers: between measured ones, then up to the cap."""
        sizes = self.measured_batch_sizes
        gaps = [(low + 1, high - 1) for low, high in zip(sizes, sizes[1:])]
        if self.max_batch_size > sizes[-1]:
            gaps.append((sizes[-1] + 1, self.max_batch_size))
        chosen: list[int] = []
        for first, last in gaps:
            if last - first + 1 <= FITTED_PER_GAP:
                chosen.extend(range(first, last + 1))
            else:
                chosen.extend(sorted({int(round(x)) for x in np.linspace(first, last, FITTED_PER_GAP)}))
        return tuple(chosen)

    def estimate(self, batch_size: int) -> BatchPoint:
        """The fitted figures at an unmeasured size within the curve's range."""
        if batch_size in self.measured_batch_sizes or not 1 <= batch_size <= self.max_batch_size:
            raise ValueError(f"batch {batch_size} is measured or beyond the fit's range ({self.max_batch_size})")
        low, high = self.latency.residual_band
        mean_high = self.mean.residual_band[1]
        extrapolated = batch_size > self.measured_batch_sizes[-1]
        if extrapolated:
            latency_ratio, mean_ratio = self.extrapolation_ratios
            low, high, mean_high = min(low, latency_ratio), max(high, latency_ratio), max(mean_high, mean_ratio)
        point = self.latency.at(batch_size)
        interval = (point * self.relative_interval[0] * low, point * self.relative_interval[1] * high)
        return BatchPoint(batch_size, point, interval, self.mean.at(batch_size) * mean_high,
                          "extrapolated" if extrapolated else "interpolated")

    def describe(self) -> str:
        """One line for a row's notes."""
        sizes = ", ".join(map(str, self.measured_batch_sizes))
        return (f"latency {self.latency.fixed_ms:.3g} + {self.latency.per_item_ms:.3g} ms x batch, fitted on "
                f"batches {sizes} (R² {self.latency.r2:.3f})")

    def to_dict(self) -> dict:
        ratios = self.extrapolation_ratios
        return {"form": "latency_ms = fixed_ms + per_item_ms * batch_size", "latency": self.latency.to_dict(),
                "mean": self.mean.to_dict(), "measured_batch_sizes": list(self.measured_batch_sizes),
                "relative_interval": list(self.relative_interval),
                "extrapolation_check": None if ratios is None else {"latency_ratio": ratios[0],
                                                                    "mean_ratio": ratios[1]},
                "max_batch_size": self.max_batch_size}
