"""Sizing arithmetic and ranking edge cases, on real model analysis and real samples (the latency model itself:
tests/test_costmodel.py)."""

import math

import numpy as np
import pytest

from advisor.costmodel import Hardware, relation
from advisor.measure import LatencyStats
from advisor.model import ModelSpec, analyze
from advisor.ranking import RUN_TO_RUN_CAP, RUN_TO_RUN_FLOOR, RankingInputs, matches, rank, run_to_run_factor
from advisor.sizing import (BatchCurve, BatchPoint, batching_window_ms, cost_per_million, instances_needed,
                            memory_needed_gib, monthly_cost, throughput_per_s)
from advisor.slo import Slo
from advisor.trials import Trial
from hwprofiles.catalog import load_catalog
from hwprofiles.targets import CpuInfo, Target

ZEN3 = CpuInfo(model="AMD EPYC 7R13", vendor="amd", arch="x86_64", microarchitecture="znver3", isa=("avx2", "fma"),
               physical_cores=2, logical_cores=2, memory_gib=4.0)
SKYLAKE = CpuInfo(model="Intel Xeon", vendor="intel", arch="x86_64", microarchitecture="skylake-avx512",
                  isa=("avx2", "avx512f"), physical_cores=3, logical_cores=6, memory_gib=16.0)


def test_sizing_by_hand():
    assert throughput_per_s(4, 20.0) == 200.0
    assert cost_per_million(0.36, 100.0) == pytest.approx(1.0)  # $0.36/h at 100/s = 360,000/h -> $1 per million
    assert batching_window_ms(1, 100) == 0 and batching_window_ms(5, 100) == 40.0
    assert instances_needed(1000, 200.0, 0.7) == math.ceil(1000 / 140)
    assert monthly_cost(3, 0.5) == 3 * 0.5 * 730
    assert memory_needed_gib(2**30, 2**29, 2) == pytest.approx(2 + 1 + 0.25)
    assert memory_needed_gib(0, 0, 1, measured_peak_rss_mib=4096) == 4.0


def test_relations():
    zen3 = Hardware(100, 10, 2, "x86-amd", "znver3")
    assert relation(zen3, Hardware(200, 20, 4, "x86-amd", "znver3")) == "same"
    assert relation(zen3, Hardware(200, 20, 4, "x86-amd", "znver4")) == "same_vendor"
    assert relation(zen3, Hardware(200, 20, 4, "x86-intel", "sapphirerapids")) == "same_arch"
    assert relation(zen3, Hardware(200, 20, 4, "arm", "neoverse-v1")) == "other_arch"
    assert relation(zen3, Hardware(8000, 300, 1, "gpu", "T4")) == "gpu_from_cpu"


def test_matching():
    catalog = load_catalog()
    local = Target("cpu", "cpu", ZEN3)
    names = {i.name for i in catalog.instances if matches(i, local)}
    assert names == {"c6a.large", "n2d-standard-2", "Standard_D2as_v5"}
    node = Target("c7i.large/cpu", "cpu", SKYLAKE, instance="c7i.large")
    assert {i.name for i in catalog.instances if matches(i, node)} == {"c7i.large"}


def _trial(target: str, batch: int, center_ms: float, threads: int = 0, phase: str = "sweep",
           config_extra: dict | None = None) -> Trial:
    rng = np.random.default_rng(batch + threads)
    samples = rng.normal(center_ms, center_ms * 0.02, 200)
    config = {"provider": "CPUExecutionProvider", "intra_op_threads": threads, "precision": "fp32",
              **(config_extra or {})}
    return Trial(id=f"ort-{target}-{threads}-b{batch}-{phase}", backend="onnxruntime", target=target, config=config,
                 batch_size=batch, status="ok", latency=LatencyStats.from_samples(samples), phase=phase,
                 peak_rss_mib=150.0)


@pytest.fixture(scope="module")
def info(cnn_path):
    return analyze(ModelSpec(cnn_path))


def _inputs(info, trials, targets, slo_ms, percentile="p99", **extra):
    return RankingInputs(info=info, trials=trials, targets=targets, catalog=load_catalog(),
                         slo=Slo(slo_ms, percentile), **extra)


def _local_trials():
    trials = [_trial("cpu", b, 1.0 * b ** 0.8) for b in (1, 2, 4, 8)]
    trials += [_trial("cpu", 1, 1.8, threads=1, phase="search")]
    return trials


def test_every_row_is_labelled_with_an_interval(info):
    ranking = rank(_inputs(info, _local_trials(), [Target("cpu", "cpu", ZEN3)], 50.0))
    assert ranking.rows
    for row in ranking.rows:
        assert row.source in ("measured", "estimated")
        assert row.latency_ms_interval[0] <= row.latency_ms <= row.latency_ms_interval[1]
    measured = {r.instance for r in ranking.rows if r.source == "measured"}
    assert measured == {"c6a.large", "n2d-standard-2", "Standard_D2as_v5"}
    assert ranking.recommendation is not None and ranking.recommendation.meets_slo
    assert ranking.recommendation.recommendable
    assert ranking.pareto and ranking.pareto[0] in {r.instance for r in ranking.rows}


def test_gpu_estimated_from_cpu_is_listed_unpriced_never_ranked(info):
    """A GPU figure from CPU runs would be invented: no latency, no cost, not among the rows, not on the frontier."""
    ranking = rank(_inputs(info, _local_trials(), [Target("cpu", "cpu", ZEN3)], 50.0))
    catalog = load_catalog()
    gpus = {i.name for i in catalog.instances if i.gpu is not None}
    assert gpus and not gpus & {r.instance for r in ranking.rows}
    assert {e["instance"] for e in ranking.not_measured} == gpus
    assert all(e["reason"].startswith("not measured: run on a GPU host") for e in ranking.not_measured)
    assert not gpus & set(ranking.pareto)
    assert ranking.to_dict()["not_measured"] and "latency_ms" not in ranking.to_dict()["not_measured"][0]


def test_recommendable_rows_sort_first_and_the_pareto_frontier_holds_only_them(info):
    from dataclasses import replace as with_

    tvm = [with_(t, id=t.id.replace("ort", "tvm"), backend="tvm", config={"tuned": True, "num_threads": 2})
           for t in _local_trials() if t.config["intra_op_threads"] == 0]
    ranking = rank(_inputs(info, tvm, [Target("cpu", "cpu", ZEN3)], 50.0))
    flags = [r.recommendable for r in ranking.rows]
    assert flags == sorted(flags, reverse=True) and False in flags
    assert ranking.rows[0] is ranking.recommendation
    unrecommendable = {r.instance for r in ranking.rows if not r.recommendable}
    assert ranking.pareto and not unrecommendable & set(ranking.pareto)
    assert all(r.not_recommendable_reason for r in ranking.rows if not r.recommendable)


def test_nothing_meets_the_slo(info):
    ranking = rank(_inputs(info, _local_trials(), [Target("cpu", "cpu", ZEN3)], 0.01))
    assert ranking.recommendation is None
    assert ranking.closest_miss is not None and ranking.closest_miss.latency_ms > 0.01
    assert ranking.closest_miss.recommendable, "a GPU estimated from CPU runs is not a near-miss one can act on"
    assert not any(r.meets_slo for r in ranking.rows)


def test_interval_crossing_the_slo_is_borderline(info):
    trials = [_trial("cpu", 1, 1.0)]
    trials[0] = Trial(**{**trials[0].__dict__, "latency": LatencyStats.from_samples([0.9, 1.0, 1.0, 1.1, 3.0])})
    ranking = rank(_inputs(info, trials, [Target("cpu", "cpu", ZEN3)], 1.05, percentile="p50"))
    c6a = next(r for r in ranking.rows if r.instance == "c6a.large")
    assert c6a.slo_verdict == "borderline" and not c6a.meets_slo
    estimated = [r for r in ranking.rows if r.source == "estimated" and r.slo_verdict == "borderline"]
    assert all(any("verify on the instance" in n for n in r.notes) for r in estimated)


def test_an_estimate_wins_only_when_cheaper_at_its_pessimistic_end(info):
    """The measured c6a.large against estimated instances: an estimate cheaper on its point value but not at the
    high end of its interval is flagged "verify on this instance type" and not recommended."""
    ranking = rank(_inputs(info, _local_trials(), [Target("cpu", "cpu", ZEN3)], 50.0))
    top = ranking.recommendation
    measured = min((r for r in ranking.rows if r.source == "measured" and r.meets_slo and r.recommendable),
                   key=lambda r: r.cost_per_million)
    cheaper = [r for r in ranking.rows if r.source == "estimated" and r.recommendable and r.meets_slo
               and r.cost_per_million < measured.cost_per_million]
    assert cheaper, "the catalogue has estimated instances cheaper on their point value"
    for row in cheaper:
        low, high = row.cost_per_million_interval
        assert low <= row.cost_per_million <= high
        if high >= measured.cost_per_million:
            assert row.verify_on_instance and row is not top
            assert any("verify on this instance type" in n for n in row.notes)
    if top.source == "estimated":
        assert top.cost_per_million_interval[1] < measured.cost_per_million
    else:
        assert top is measured


def test_unmatched_local_machine_appears_priced_only_with_local_price(info):
    odd = Target("cpu", "cpu", SKYLAKE)
    trials = [_trial("cpu", b, 2.0 * b) for b in (1, 2)]
    unpriced = rank(_inputs(info, trials, [odd], 50.0))
    local = next(r for r in unpriced.rows if r.instance.startswith("local ("))
    assert local.source == "measured" and local.cost_per_million is None
    priced = rank(_inputs(info, trials, [odd], 50.0, local_price_per_hour=0.01))
    local = next(r for r in priced.rows if r.instance.startswith("local ("))
    assert local.cost_per_million == pytest.approx(cost_per_million(0.01, local.throughput_per_s))


def test_qps_sizing_and_memory_exclusion(info):
    trials = _local_trials()
    trials = [Trial(**{**t.__dict__, "peak_rss_mib": 40 * 1024.0}) for t in trials]  # 40 GiB measured
    ranking = rank(_inputs(info, trials, [Target("cpu", "cpu", ZEN3)], 50.0, qps=1000))
    reasons = {e["instance"]: e["reason"] for e in ranking.excluded}
    assert reasons["c6a.large"] == "needs 40.0 GiB, has 4 GiB of memory"
    for row in ranking.rows:
        assert row.memory_needed_gib <= 2048
        assert row.instances_needed == instances_needed(1000, row.throughput_per_s, 0.7)
        assert row.monthly_cost == pytest.approx(row.instances_needed * row.price_per_hour * 730)


def test_cluster_node_measurements_attach_to_their_instance(info):
    trials = _local_trials() + [_trial("c7i.large/cpu", b, 0.5 * b) for b in (1, 2)]
    targets = [Target("cpu", "cpu", ZEN3), Target("c7i.large/cpu", "cpu", SKYLAKE, instance="c7i.large")]
    ranking = rank(_inputs(info, trials, targets, 50.0))
    c7i = next(r for r in ranking.rows if r.instance == "c7i.large")
    assert c7i.source == "measured" and c7i.target == "c7i.large/cpu"
    assert c7i.latency_ms == pytest.approx(0.5, rel=0.1)


def test_estimates_fit_per_backend_and_scale_with_cores(info):
    """A slow backend's trials must not bend the ONNX Runtime fit; a same-microarchitecture instance with more
    cores is estimated faster for a candidate that uses all cores, and no faster for one pinned to 1 thread."""
    local = Target("cpu", "cpu", Target("cpu", "cpu", ZEN3).cpu)
    trials = _local_trials() + [_trial("cpu", 2, 1.0 * 2 ** 0.8 / 1.7, threads=2, phase="search")]
    slow = [Trial(**{**_trial("cpu", b, 60.0 * b, threads=0, phase="search").__dict__, "backend": "tvm",
                     "id": f"tvm-{b}"}) for b in (1, 2)]
    ranking = rank(_inputs(info, trials + slow, [local], 500.0))
    fits = ranking.costmodel["targets"]["cpu"]["fits"]
    assert set(fits) == {"onnxruntime", "tvm"} and fits["onnxruntime"]["observations"] == len(trials)
    rows = {r.instance: r for r in ranking.rows}
    assert rows["c6a.2xlarge"].source == "estimated" and rows["c6a.2xlarge"].backend == "onnxruntime"
    assert rows["c6a.2xlarge"].latency_ms < rows["c6a.large"].latency_ms


def test_measured_machine_figures_use_the_cores_it_shows():
    """c6a.large is 1 physical core with SMT; a VM of that type shows its 2 vCPUs as 2 cores. The measured machine
    and the estimated instances count cores alike (vCPUs), so the measured machine is exactly that entry (its peak
    is one core's, not doubled), and an instance of the same type is estimated at the same figure."""
    from advisor.ranking import instance_hardware, target_hardware

    catalog = load_catalog()
    hardware, figures = target_hardware(Target("cpu", "cpu", ZEN3), catalog)
    c6a = instance_hardware(next(i for i in catalog.instances if i.name == "c6a.large"))
    assert hardware == c6a and hardware.cores == 2 and hardware.peak_gflops == pytest.approx(115.0)
    assert figures == "catalogue entry c6a.large"
    wider = target_hardware(Target("cpu", "cpu", ZEN3.__class__(**{**ZEN3.__dict__, "logical_cores": 4})), catalog)
    assert wider[0].cores == 4 and wider[0].peak_gflops == pytest.approx(230.0)
    assert wider[1] == "catalogue entry c6a.xlarge"


def test_a_tuned_tvm_build_is_recommended_only_where_it_was_compiled(info):
    """A TVM library is machine code for the CPU it was tuned on: on another microarchitecture the instance takes
    its best portable candidate instead, and where TVM is all there is, the row is shown but never recommended."""
    from dataclasses import replace as with_

    local = Target("cpu", "cpu", ZEN3)
    ort = _local_trials()
    tvm = [with_(t, id=t.id.replace("ort", "tvm"), backend="tvm", config={"tuned": True, "num_threads": 2},
                 latency=LatencyStats.from_samples([x * 0.5 for x in t.latency.samples_ms]))
           for t in ort if t.config["intra_op_threads"] == 0]
    ranking = rank(_inputs(info, ort + tvm, (local,), slo_ms=1000))
    rows = {r.instance: r for r in ranking.rows}
    assert rows["c6a.large"].backend == "tvm" and rows["c6a.large"].recommendable  # measured here
    arm = rows["c7g.large"]
    assert arm.source == "estimated" and arm.backend == "onnxruntime" and arm.recommendable
    intel = rows["c7i.large"]
    assert intel.backend == "onnxruntime", "the faster TVM estimate must not displace the portable candidate"
    only_tvm = {r.instance: r for r in rank(_inputs(info, tvm, (local,), slo_ms=1000)).rows}
    assert not only_tvm["c7g.large"].recommendable
    assert "compiled and tuned for the measured CPU" in only_tvm["c7g.large"].not_recommendable_reason
    catalog = {i.name: i for i in load_catalog().instances}
    for row in ranking.rows:
        if row.backend == "tvm" and row.recommendable:
            assert catalog[row.instance].cpu.microarchitecture == "znver3", row.instance


# --- latency against batch size (advisor.sizing.BatchCurve) ---------------------------------------------------

def _sweep(fixed_ms: float, per_item_ms: float, batches=(1, 2, 4, 8)) -> list[Trial]:
    return [_trial("cpu", b, fixed_ms + per_item_ms * b) for b in batches]


def _exact(batch: int, ms: float) -> Trial:
    """A trial whose every sample is `ms`: its percentiles, interval and mean are exactly `ms` (hand arithmetic)."""
    return Trial(id=f"ort-b{batch}", backend="onnxruntime", target="cpu",
                 config={"provider": "CPUExecutionProvider", "intra_op_threads": 0, "precision": "fp32"},
                 batch_size=batch, status="ok", latency=LatencyStats.from_samples([ms] * 50), phase="sweep",
                 peak_rss_mib=150.0)


def _curve(trials):
    from advisor.ranking import CandidateCurve

    return CandidateCurve("onnxruntime", "cpu", dict(trials[0].config), {t.batch_size: t for t in trials})


@pytest.mark.parametrize("fixed_ms, per_item_ms", [(2.0, 0.5), (0.1, 1.0), (1.0, 0.0)])
def test_batch_fit_recovers_fixed_and_per_item_costs(fixed_ms, per_item_ms):
    """Sweeps drawn around a known line (2 % noise): the median and mean lines recover both costs; a flat curve
    (a GPU below saturation) gets no negative per-item cost."""
    fit = _curve(_sweep(fixed_ms, per_item_ms)).batch_curve("p50")
    for line in (fit.latency, fit.mean):
        assert line.fixed_ms == pytest.approx(fixed_ms, rel=0.05, abs=0.01)
        assert line.per_item_ms == pytest.approx(per_item_ms, rel=0.05, abs=0.01)
        assert line.per_item_ms >= 0 and line.residual_band[0] > 0.97 and line.residual_band[1] < 1.03
    if per_item_ms:
        assert fit.latency.r2 > 0.99
    assert fit.measured_batch_sizes == (1, 2, 4, 8) and fit.max_batch_size == 16
    assert 0.97 < fit.extrapolation_ratios[0] < 1.03


def test_sizing_an_interpolated_batch_by_hand(info):
    """latency = 2 + 1 ms x batch, measured exactly at 1, 2, 4, 8; SLO 20 ms, 3000 qps, 70 % utilisation. Each
    instance receives 3000 / its instance count, and a batch of b waits (b - 1) of those arrivals.
    Batch 6: 750/s, 3000 / (750 x 0.7) = 5.7 -> 6 instances of 500 qps each, wait 5 / 500 s = 10 ms: 8 + 10 = 18 ms,
    meets; batch 7: 778/s -> 6 instances, 9 + 12 = 21, misses; batch 8 (measured): 10 + 14, misses. So batch 6:
    6 instances, 6 x price x 730 h a month, and the row reports batch 6's 18 ms (8 ms the call, 10 ms the wait),
    with the call's interval widened by the run-to-run floor: 6.7-9.6 ms, 16.7-19.6 ms with the wait (meets)."""
    trials = [_exact(b, 2.0 + b) for b in (1, 2, 4, 8)]
    ranking = rank(_inputs(info, trials, [Target("cpu", "cpu", ZEN3)], 20.0, qps=3000))
    row = next(r for r in ranking.rows if r.instance == "c6a.large")
    assert row.source == "measured" and row.batch_size == 6 and row.batch_basis == "interpolated"
    assert row.throughput_per_s == pytest.approx(750.0)
    assert row.instances_needed == 6
    assert row.monthly_cost == 6 * row.price_per_hour * 730
    assert row.cost_per_million == pytest.approx(row.price_per_hour / (750.0 * 3600) * 1e6)
    assert any(n.startswith("batch 6 interpolated: latency 2 + 1 ms x batch") for n in row.notes), row.notes
    assert row.processing_ms == pytest.approx(8.0) and row.batching_wait_ms == pytest.approx(10.0)
    # exact samples have no sampling error; the interval is the run-to-run floor (1.2x) on the call, plus the wait
    assert row.latency_ms == pytest.approx(18.0)
    assert row.latency_ms_interval == pytest.approx((8.0 / RUN_TO_RUN_FLOOR + 10.0, 8.0 * RUN_TO_RUN_FLOOR + 10.0))
    assert row.slo_verdict == "meets" and row.batch_fit.startswith("latency 2 + 1 ms x batch")
    assert row.to_dict()["batch_basis"] == "interpolated"
    (fit,) = ranking.costmodel["batch_fits"]
    assert fit["latency"]["fixed_ms"] == pytest.approx(2.0) and fit["latency"]["per_item_ms"] == pytest.approx(1.0)
    assert fit["latency"]["r2"] == pytest.approx(1.0) and fit["max_batch_size"] == 16
    for other in ranking.rows:  # estimated rows: the fitted points moved like the measured ones, and labelled
        if other.batch_basis != "measured":
            assert any(n.startswith(f"batch {other.batch_size} {other.batch_basis}") for n in other.notes)
        assert other.batch_size <= 16


def test_a_measurement_is_never_replaced_by_the_fit(info):
    """Batch 8 measured at 9 ms, under the line through 1, 2, 4 (10 ms): sizing uses the 9 ms it saw. Without
    --qps an instance receives 70 % of its throughput: batch 8 waits 7 / (0.7 x 888.9/s) = 11.25 ms."""
    trials = [_exact(b, 2.0 + b) for b in (1, 2, 4)] + [_exact(8, 9.0)]
    row = next(r for r in rank(_inputs(info, trials, [Target("cpu", "cpu", ZEN3)], 25.0)).rows
               if r.instance == "c6a.large")
    assert row.batch_size == 8 and row.batch_basis == "measured"
    assert row.throughput_per_s == 8 * 1000 / 9.0
    assert row.batching_wait_ms == pytest.approx(7 / (0.7 * 8000 / 9.0) * 1000)
    assert row.latency_ms == pytest.approx(9.0 + row.batching_wait_ms)


def test_no_extrapolation_past_the_cap(info):
    """With an SLO nothing strains, the largest batch sizing may pick is 2x the largest measured (and none beyond
    the measured ones with only two sizes: a line through two points has no residuals to trust)."""
    local = [Target("cpu", "cpu", ZEN3)]
    three = rank(_inputs(info, [_exact(b, 1.0 + 0.5 * b) for b in (1, 2, 4)], local, 1000.0))
    c6a = next(r for r in three.rows if r.instance == "c6a.large")
    assert c6a.batch_size == 8 and c6a.batch_basis == "extrapolated"
    assert c6a.throughput_per_s == pytest.approx(8 * 1000 / 5.0)
    assert any("cap 8: 2x the largest measured" in n for n in c6a.notes)
    assert max(r.batch_size for r in three.rows) == 8
    two = rank(_inputs(info, [_exact(b, 1.0 + 0.5 * b) for b in (1, 2)], local, 1000.0))
    assert {r.batch_size for r in two.rows} == {2} and {r.batch_basis for r in two.rows} == {"measured"}
    assert two.costmodel["batch_fits"][0]["extrapolation_check"] is None


def test_a_candidate_measured_at_one_batch_size_has_no_fit(info):
    ranking = rank(_inputs(info, [_exact(1, 4.0)], [Target("cpu", "cpu", ZEN3)], 50.0, qps=1000))
    assert ranking.costmodel["batch_fits"] == []
    row = next(r for r in ranking.rows if r.instance == "c6a.large")
    assert row.batch_size == 1 and row.batch_basis == "measured" and row.throughput_per_s == 250.0
    assert row.instances_needed == math.ceil(1000 / (250.0 * 0.7)) == 6
    assert not any("interpolated" in n or "extrapolated" in n for r in ranking.rows for n in r.notes)


def test_a_fixed_shape_build_is_packaged_at_the_batch_size_it_was_sized_at():
    """A TVM build serves only its own shape: the artifact for a row sized at batch 8 is the batch-8 build; an ONNX
    Runtime session serves any batch, so its row's own trial is packaged."""
    from dataclasses import replace as with_

    from advisor.pipeline import artifact_trial

    b1, b8 = _trial("cpu", 1, 1.0), _trial("cpu", 8, 5.0, phase="sweep")
    tvm1, tvm8 = (with_(t, id=t.id.replace("ort", "tvm"), backend="tvm", config={"tuned": True}) for t in (b1, b8))
    trials = [b1, b8, tvm1, tvm8]
    assert artifact_trial({"trial_id": tvm1.id, "batch_size": 8}, trials) is tvm8
    assert artifact_trial({"trial_id": tvm1.id, "batch_size": 4}, trials) is tvm1  # no batch-4 build: its own
    assert artifact_trial({"trial_id": b1.id, "batch_size": 8}, trials) is b1


def test_fixed_shape_backends_are_sized_only_at_measured_batch_sizes(info):
    from dataclasses import replace as with_

    local = Target("cpu", "cpu", ZEN3)
    tvm = [with_(t, id=t.id.replace("ort", "tvm"), backend="tvm", config={"tuned": True, "num_threads": 2})
           for t in _local_trials() if t.config["intra_op_threads"] == 0]
    ranking = rank(_inputs(info, tvm, (local,), slo_ms=1000, qps=5000))
    assert ranking.rows and all(r.batch_size in (1, 2, 4, 8) and r.batch_basis == "measured" for r in ranking.rows)


def test_measured_intervals_hold_the_run_to_run_spread(info):
    """A configuration measured twice in two processes (search and sweep) that disagree by 1.5x widens every
    measured interval by 1.5x; agreeing measurements still get the floor."""
    search = [_trial("cpu", 1, 10.0, phase="search")]
    sweep = [_trial("cpu", b, 15.0 * b, phase="sweep") for b in (1, 2)]
    spread = run_to_run_factor(search + sweep, "p99")
    assert spread.pairs == 1 and spread.largest_observed == pytest.approx(1.5, rel=0.05)
    assert spread.factor == spread.largest_observed
    assert run_to_run_factor(sweep, "p99").factor == RUN_TO_RUN_FLOOR and run_to_run_factor(sweep, "p99").pairs == 0
    ranking = rank(_inputs(info, search + sweep, [Target("cpu", "cpu", ZEN3)], 1000.0))
    row = next(r for r in ranking.rows if r.instance == "c6a.large" and r.batch_size == 1)
    low, high = sweep[0].latency.intervals["p99"]
    assert row.latency_ms_interval == pytest.approx((low / spread.factor, high * spread.factor))
    assert ranking.costmodel["run_to_run"]["factor"] == spread.factor


def test_a_line_that_does_not_fit_its_points_is_not_extrapolated():
    """An MLP's measured p99s (jitter more than batch cost): 0.414, 0.337, 0.381, 0.499 ms at batches 1, 2, 4, 8.
    Their line misses them by up to 17 %, so sizing stays within the measured sizes (fresh processes measured
    0.27 ms at batch 16, where the line said 0.6)."""
    points = [BatchPoint(b, p, (p * 0.9, p * 1.1), p * 0.5) for b, p in ((1, 0.414), (2, 0.337), (4, 0.381),
                                                                         (8, 0.499))]
    curve = BatchCurve.fit(points)
    assert curve.max_batch_size == 8 and max(curve.fitted_batch_sizes()) < 8
    exact = [BatchPoint(b, 2.0 + b, (2.0 + b, 2.0 + b), 1.0 + b) for b in (1, 2, 4, 8)]
    assert BatchCurve.fit(exact).max_batch_size == 16  # a line that fits is followed up to 2x


def test_a_busy_machine_widens_intervals_by_the_cap_and_says_so():
    """The same configuration 35x apart in two processes (another job took the cores): the factor stops at the
    cap, and the report says the figures need a quiet machine."""
    search = [_trial("cpu", 1, 10.0, phase="search")]
    sweep = [_trial("cpu", 1, 350.0, phase="sweep")]
    spread = run_to_run_factor(search + sweep, "p99")
    assert spread.largest_observed == pytest.approx(35.0, rel=0.05) and spread.factor == RUN_TO_RUN_CAP
    assert spread.busy and "rerun on a quiet machine" in spread.note()
    assert spread.to_dict()["busy"] and not run_to_run_factor(search, "p99").busy


def test_gpu_estimates_from_a_gpu_use_the_peak_of_the_candidates_precision(info):
    """Measured on an A10G, estimated on an H100: an fp16 candidate moves by the fp16 tensor-core peaks, which grow
    far more from A10G to H100 than the fp32 ones, so it is estimated relatively faster than an fp32 candidate."""
    from dataclasses import replace as with_

    from hwprofiles.targets import GpuInfo

    gpu = GpuInfo(index=0, name="NVIDIA A10G", memory_gib=22.0, compute_capability="8.6", driver_version="535",
                  cuda_version="12.2", catalog_type="A10G")
    target = Target("cuda:0", "cuda", ZEN3, gpu=gpu)
    fp32 = [with_(_trial("cuda:0", b, 20.0 * b ** 0.9), id=f"ort-fp32-b{b}") for b in (1, 2, 4, 8)]
    fp16 = [with_(t, id=t.id.replace("ort-fp32", "trt-fp16"), backend="tensorrt",
                  config={"precision": "fp16"}) for t in fp32]

    def h100_over_measured(trials) -> float:
        ranking = rank(_inputs(info, trials, [target], 500.0, batch_size=1))
        rows = {r.instance: r for r in ranking.rows}
        assert rows["g5.xlarge"].source == "measured"
        h100 = rows["p5.48xlarge"]
        assert h100.source == "estimated" and h100.estimate_relation == "gpu_from_gpu"
        return h100.processing_ms / rows["g5.xlarge"].processing_ms

    assert h100_over_measured(fp32) > h100_over_measured(fp32 + fp16) * 1.05
