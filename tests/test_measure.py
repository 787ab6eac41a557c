import numpy as np
import pytest

from advisor.measure import HarnessSettings, LatencyStats, compare_outputs, interleaved_samples, time_calls


def test_stats_from_samples():
    samples = list(np.linspace(1.0, 100.0, 100))
    stats = LatencyStats.from_samples(samples)
    assert stats.n == 100
    assert stats.p50 == pytest.approx(np.percentile(samples, 50))
    assert stats.p99 == pytest.approx(np.percentile(samples, 99))
    for name in ("p50", "p90", "p95", "p99"):
        low, high = stats.intervals[name]
        assert low <= stats.at(name) <= high
    assert LatencyStats.from_dict(stats.to_dict()) == stats


def test_interval_narrows_with_more_samples():
    rng = np.random.default_rng(1)
    few = LatencyStats.from_samples(rng.normal(10, 1, 30))
    many = LatencyStats.from_samples(rng.normal(10, 1, 3000))
    width = lambda s: s.intervals["p50"][1] - s.intervals["p50"][0]  # noqa: E731
    assert width(many) < width(few)


def test_time_calls_honours_minimums_and_cap():
    calls = []
    settings = HarnessSettings(warmup=2, min_iterations=5, min_time_s=0.05, max_time_s=5)
    samples = time_calls(lambda: calls.append(1), settings)
    assert len(samples) >= 5 and len(calls) == len(samples) + 2
    slow = HarnessSettings(warmup=0, min_iterations=1000, min_time_s=10, max_time_s=0.2)
    import time
    start = time.monotonic()
    time_calls(lambda: time.sleep(0.01), slow)
    assert time.monotonic() - start < 1.0


def test_interleaved_gives_each_candidate_samples():
    import time
    settings = HarnessSettings(warmup=1, min_iterations=10, min_time_s=0.0, max_time_s=5)
    result = interleaved_samples({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, settings, block=5)
    assert len(result["fast"]) >= 10 and len(result["slow"]) >= 10
    assert np.median(result["slow"]) > np.median(result["fast"])


def test_compare_outputs():
    ref = [np.array([1.0, 2.0, 4.0], dtype=np.float32)]
    assert compare_outputs([ref[0] + 1e-5], ref, 1e-3).passed
    check = compare_outputs([ref[0] + 0.4], ref, 0.05)
    assert not check.passed and check.max_abs_error == pytest.approx(0.4, rel=1e-4)
    assert check.max_rel_error == pytest.approx(0.1, rel=1e-4)
    assert not compare_outputs([np.zeros(2)], ref, 1).passed  # shape mismatch
    assert not compare_outputs([np.array([np.nan, 0, 0])], ref, 1).passed
