import numpy as np
import pytest

from advisor.measure import (MIN_SAMPLES, HarnessSettings, LatencyStats, compare_outputs, interleaved_rounds,
                             interleaved_samples, paired_difference, time_calls, wait_until_quiet)


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
    timing = time_calls(lambda: calls.append(1), settings)
    assert len(timing.samples_ms) >= 5 and len(calls) == len(timing.samples_ms) + 2 and not timing.stopped_early
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


def test_hopeless_candidate_is_stopped_after_three_calls():
    import time
    calls = []
    settings = HarnessSettings(warmup=3, min_iterations=50, min_time_s=5, max_time_s=30)
    timing = time_calls(lambda: (calls.append(1), time.sleep(0.02)), settings, hopeless_ms=5.0)
    assert timing.stopped_early and len(calls) == 3 and min(timing.samples_ms) > 5.0
    # one slow first call (lazy initialisation) does not condemn a fast candidate
    first = []
    timing = time_calls(lambda: first.append(1) or (time.sleep(0.05) if len(first) == 1 else None),
                        HarnessSettings(warmup=3, min_iterations=20, min_time_s=0.01), hopeless_ms=5.0)
    assert not timing.stopped_early and len(timing.samples_ms) >= 20


def test_few_samples_widen_the_tail_interval_to_the_slowest_sample():
    rng = np.random.default_rng(2)
    samples = list(rng.normal(10, 0.5, 60)) + [40.0]
    stats = LatencyStats.from_samples(samples)
    assert stats.n < MIN_SAMPLES["p99"] and not stats.sufficient("p99") and stats.sufficient("p50")
    assert stats.intervals["p99"][1] == pytest.approx(40.0)
    assert stats.to_dict()["sufficient"] == {"p50": True, "p90": True, "p95": False, "p99": False}
    assert HarnessSettings().for_percentile("p99").min_iterations == MIN_SAMPLES["p99"]


def test_block_bootstrap_is_wider_than_independent_draws_for_correlated_samples():
    """Samples in runs of slow and fast calls (a busy neighbour): single draws would understate the spread."""
    rng = np.random.default_rng(0)
    blocks = [list(rng.normal(rng.normal(10, 1), 0.1, 20)) for _ in range(10)]
    blocked = LatencyStats.from_samples([], blocks=blocks)
    flat = [v for b in blocks for v in b]
    independent = [np.percentile(rng.choice(flat, len(flat)), 50) for _ in range(1000)]
    width = blocked.intervals["p50"][1] - blocked.intervals["p50"][0]
    assert width > 2 * (np.quantile(independent, 0.975) - np.quantile(independent, 0.025))


def test_paired_difference_ties_and_wins():
    rng = np.random.default_rng(3)
    base = [list(rng.normal(10, 0.3, 30)) for _ in range(12)]
    same = [list(rng.normal(10, 0.3, 30)) for _ in range(12)]
    faster = [list(rng.normal(8, 0.3, 30)) for _ in range(12)]
    tie = paired_difference(same, base, "p50")
    assert not tie.better and not tie.worse and tie.interval_ms[0] < 0 < tie.interval_ms[1]
    win = paired_difference(faster, base, "p50")
    assert win.better and win.diff_ms == pytest.approx(-2.0, abs=0.2)
    assert paired_difference(base, faster, "p50").worse


def test_paired_difference_decides_nothing_on_fewer_than_three_rounds():
    """One round bootstraps to a zero-width interval (every resample is that round): a 'win' on one round's
    evidence is no win. Seen in a head-to-head cut short by the budget."""
    rng = np.random.default_rng(4)
    base = [list(rng.normal(10, 0.3, 30)) for _ in range(2)]
    faster = [list(rng.normal(8, 0.3, 30)) for _ in range(2)]
    for rounds in (1, 2):
        undecided = paired_difference(faster[:rounds], base[:rounds], "p50")
        assert not undecided.better and not undecided.worse
        assert undecided.diff_ms == pytest.approx(-2.0, abs=0.3)


def _spinning_pool():
    """A thread that keeps burning CPU for 0.1 s after each call, as ONNX Runtime's intra-op pool spins."""
    import threading
    import time

    def call():
        def spin():
            end = time.perf_counter() + 0.1
            while time.perf_counter() < end:
                pass
        threading.Thread(target=spin, daemon=True).start()
    return call


def test_wait_until_quiet_outlasts_a_spinning_pool():
    _spinning_pool()()
    waited = wait_until_quiet()
    assert 0.05 < waited < 1.0


def test_rounds_alternate_one_candidate_at_a_time():
    import time
    order = []
    runs = {"a": lambda: order.append("a"), "b": lambda: (order.append("b"), time.sleep(0.001))}
    rounds = interleaved_rounds(runs, HarnessSettings(warmup=1, min_iterations=30, min_time_s=0.3, max_time_s=5),
                                block=5)
    assert len(rounds["a"]) == len(rounds["b"]) >= 2
    assert all(len(block) >= 5 for blocks in rounds.values() for block in blocks)
    switches = sum(1 for x, y in zip(order, order[1:]) if x != y)
    assert switches <= 2 * len(rounds["a"]) + 1, "candidates ran in blocks, not call by call"
