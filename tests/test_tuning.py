"""The tuning driver's decisions on statistics: what is discarded, who wins the head-to-head, what is swept."""

from __future__ import annotations

import numpy as np

from advisor.measure import LatencyStats
from advisor.slo import Slo
from advisor.trials import Trial
from advisor.tuning import DISCARD_MARGIN, TargetTuning, discard_if_slower


def _trial(name: str, center_ms: float, spread: float = 0.02, config: dict | None = None, phase: str = "search",
           details: dict | None = None, seed: int = 0) -> Trial:
    samples = np.random.default_rng(seed).normal(center_ms, center_ms * spread, 600)
    return Trial(id=f"{name}-{phase}", backend="tvm", target="cpu", config=config or {"name": name}, batch_size=1,
                 status="ok", latency=LatencyStats.from_samples(samples), phase=phase, details=details or {})


def test_a_tuned_build_slower_than_its_untuned_build_is_discarded_with_the_reason():
    untuned = _trial("untuned", 0.63)
    tuned = _trial("tuned", 10.5)  # the held-out OCR recogniser of issue 13
    kept = discard_if_slower(tuned, untuned)
    assert kept.status == "skipped" and not kept.ok
    assert kept.reason.startswith("discarded: slower than tvm's baseline configuration")
    assert f"({tuned.latency.p50:.4g} ms against {untuned.latency.p50:.4g} ms p50" in kept.reason


def test_within_run_to_run_noise_a_slower_candidate_is_kept():
    baseline = _trial("baseline", 1.0)
    assert discard_if_slower(_trial("close", 1.0 * DISCARD_MARGIN * 0.98, seed=1), baseline).ok
    assert discard_if_slower(_trial("faster", 0.5, seed=2), baseline).ok
    assert not discard_if_slower(_trial("slow", 1.0 * DISCARD_MARGIN * 1.1, seed=3), baseline).ok
    assert discard_if_slower(_trial("first", 1.0), None).ok  # the baseline itself


def _tuning() -> TargetTuning:
    return TargetTuning(target=None, backends=[], measurer=None, slo=Slo(100.0), sweep_batch_sizes=[1],
                        slo_batch_size=1)


def _confirmed(name: str, center_ms: float, better: bool | None, config: dict) -> Trial:
    details = {} if better is None else {"head_to_head": {"better": better}}
    return _trial(name, center_ms, config=config, phase="confirm", details=details)


def test_ties_go_to_the_stock_baseline_and_a_winner_must_be_better_beyond_the_interval():
    stock = _trial("stock", 1.0, config={"stock": True})
    fast = _trial("fast", 0.9, config={"threads": 1})
    faster = _trial("faster", 0.8, config={"threads": 2})
    searched = [stock, fast, faster]
    tuning = _tuning()
    tie = [_confirmed("stock", 1.0, None, stock.config), _confirmed("fast", 0.99, False, fast.config),
           _confirmed("faster", 0.98, False, faster.config)]
    assert tuning.finalists(searched, [stock], tie) == [stock]
    won = [tie[0], tie[1], _confirmed("faster", 0.7, True, faster.config)]
    [winner, baseline] = tuning.finalists(searched, [stock], won)
    assert winner.config == faster.config and baseline is stock
    assert tuning.finalists(searched, [stock], []) == [stock]  # no head-to-head (no time left): stock
