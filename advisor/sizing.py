"""Throughput sizing and memory fit: the arithmetic between latencies and money."""

from __future__ import annotations

import math

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
