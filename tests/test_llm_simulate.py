"""advisor.llm.simulate and advisor.llm.workload: continuous batching checked against hand-computed cases, load
behaviour, speed, and the workload file format."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from advisor.llm.perf import Device, Efficiency, ModelWork, StepModel, prior_efficiency
from advisor.llm.simulate import (EngineConfig, SimResult, SimulationError, Slos, capacity_rps, max_rate_meeting,
                                   simulate)
from advisor.llm.workload import LengthDistribution, Workload, WorkloadError, load_workload

UNIT = Efficiency(1.0, 1.0, 1.0, 0.0, (1.0, 1.0), "test: efficiency 1")
H100 = Device("H100", 1, 989.4, 3350.0, None, None)
# Llama-3.1-8B in bf16 (tests/test_llm_perf.py has the hand derivation)
LLAMA_8B = ModelWork(15_009_849_344, 524_288, 16_060_522_496, 16_060_522_496, 131_072, 32, 4096, 2)
# the same without attention FLOPs and KV traffic: every decode step of one sequence then takes the same time
FLAT_8B = ModelWork(15_009_849_344, 0.0, 16_060_522_496, 16_060_522_496, 0.0, 32, 4096, 2)
ROOMY = EngineConfig(max_num_seqs=64, max_num_batched_tokens=8192, kv_capacity_tokens=400_000)


def one_request(prompt: int, output: int) -> Workload:
    # constant arrivals at 0.001 rps for 10 s: ceil(0.01) = 1 request, at t = 0
    return Workload.fixed(prompt, output, 0.001, arrival="constant", duration_s=10.0)


def test_one_request_alone_gets_prefill_time_then_decode_steps():
    """No contention: TTFT is the prefill step, every gap a decode step of one sequence, E2E = TTFT + 299 gaps."""
    step = StepModel(FLAT_8B, H100, Efficiency(0.5, 0.8, 1.0, 0.5, (1.0, 1.0), "test"))
    result = simulate(step, one_request(2000, 300), ROOMY)
    prefill, decode = step.prefill_ms(2000), step.decode_step_ms(1, 2001)
    # by hand: prefill 2000 x 15.01e9 / (989.4e12 x 0.5) + 0.5 = 61.184 ms; decode 16.06e9 / (3.35e12 x 0.8) + 0.5
    assert prefill == pytest.approx(61.184, rel=1e-4)
    assert decode == pytest.approx(6.4927, rel=1e-4)
    for p in ("p50", "p99"):
        assert result.ttft_ms[p] == pytest.approx(prefill, rel=1e-12)
        assert result.itl_ms[p] == pytest.approx(decode, rel=1e-12)
        assert result.tpot_ms[p] == pytest.approx(decode, rel=1e-9)
        assert result.e2e_ms[p] == pytest.approx(prefill + 299 * decode, rel=1e-9)
    assert (result.requests, result.completed, result.preemptions) == (1, 1, 0)
    assert result.stable


def test_one_request_with_chunks_and_growing_context():
    """Chunked prefill of 2000 tokens by 512: TTFT = the four chunk steps; with KV and attention the gaps grow from
    decode_step_ms(1, 2001) to decode_step_ms(1, 2299)."""
    step = StepModel(LLAMA_8B, H100, UNIT)
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=512, kv_capacity_tokens=10_000)
    result = simulate(step, one_request(2000, 300), engine)
    assert result.ttft_ms["p50"] == pytest.approx(step.prefill_ms(2000, 512), rel=1e-12)
    first_gap, last_gap = step.decode_step_ms(1, 2001), step.decode_step_ms(1, 2299)
    assert first_gap < last_gap
    assert first_gap * (1 - 1e-12) <= result.itl_ms["p50"] <= last_gap * (1 + 1e-12)
    assert result.itl_ms["p99"] <= last_gap * (1 + 1e-12)


def test_one_sequence_at_a_time_queues_the_second_request():
    """max_num_seqs = 1, two requests at t = 0 and 1 ms (constant 1000 rps for 2 ms): the second is admitted when
    the first finishes, so TTFT2 = E2E1 - 1 ms + prefill (FLAT_8B at efficiency 1: prefill 30.342 ms, decode
    4.7942 ms, E2E1 = 30.342 + 9 x 4.7942 = 73.490 ms; TTFT2 = 102.832 ms)."""
    step = StepModel(FLAT_8B, H100, UNIT)
    engine = EngineConfig(max_num_seqs=1, max_num_batched_tokens=4096, kv_capacity_tokens=10_000)
    workload = Workload.fixed(2000, 10, 1000.0, arrival="constant", duration_s=0.002)
    result = simulate(step, workload, engine)
    prefill, decode = step.prefill_ms(2000), step.decode_step_ms(1, 2001)
    e2e_first = prefill + 9 * decode
    assert e2e_first == pytest.approx(73.490, rel=1e-4)
    # two requests: p50 interpolates halfway, p99 is 99 % of the way to the larger
    assert result.ttft_ms["p50"] == pytest.approx((prefill + e2e_first - 1 + prefill) / 2, rel=1e-9)
    assert result.ttft_ms["p99"] == pytest.approx(prefill + 0.99 * (e2e_first - 1), rel=1e-9)


def test_runs_of_decode_steps_summed_in_closed_form_match_stepping_one_by_one():
    """The simulation sums runs of decode-only steps as arithmetic series; stepping one at a time (max_run=1) must
    give the same token times. A workload with a compute/memory switch inside runs (batches up to 64 on a
    model whose attention makes long decode steps compute-bound) and with preemptions."""
    from advisor.llm.simulate import _draws, _run

    step = StepModel(LLAMA_8B, Device("L4", 2, 121.0, 300.0, 32.0, "pcie"), prior_efficiency("L4", "vllm"))
    engine = EngineConfig(max_num_seqs=64, max_num_batched_tokens=2048, kv_capacity_tokens=60_000)
    workload = Workload(LengthDistribution.histogram([(200, 3000)], [1]), LengthDistribution.histogram([(10, 400)],
                        [1]), 3.0, duration_s=60.0)
    arrival, prompt, output = _draws(workload, 5)
    fast = _run(step, workload, engine, arrival, prompt, output, 1.0)
    slow = _run(step, workload, engine, arrival, prompt, output, 1.0, max_run=1)
    assert fast.preemptions == slow.preemptions
    assert np.allclose(fast.first, slow.first, rtol=1e-9, equal_nan=True)
    assert np.allclose(fast.finish, slow.finish, rtol=1e-9, equal_nan=True)
    assert fast.step_ms == pytest.approx(slow.step_ms, rel=1e-9)
    assert fast.step_start == pytest.approx(slow.step_start, rel=1e-9)


def test_closed_form_run_switches_roofline_side_and_finds_the_arrival():
    """A device with a low peak: 40 sequences' decode step is compute-bound at short contexts and memory-bound at long
    ones (the KV read grows 131,072 bytes per token, the attention FLOPs relatively less). The closed-form segments
    give every step's step_ms, and the count of steps ending before a time matches a running sum."""
    from advisor.llm.simulate import _decode_run, _ends_before

    step = StepModel(LLAMA_8B, Device("slow", 1, 10.0, 300.0, None, None), UNIT)
    n, context, k = 40, 40 * 100, 3000
    segments = _decode_run(step.decode_line(n), n, context, k, 1.0)
    assert len(segments) == 2 and step.regime(0, 0, n, context) == "compute"
    assert step.regime(0, 0, n, context + n * (k - 1)) == "memory"
    times = [first + slope * j for first, slope, count in segments for j in range(count)]
    assert times == pytest.approx([step.step_ms(0, 0, n, context + n * j) for j in range(k)], rel=1e-12)
    ends = np.cumsum(times)
    # (off the step ends by a relative 1e-9: a closed-form sum and a running sum round differently)
    for gap in (0.5 * times[0], ends[10] * (1 - 1e-9), ends[10] * (1 + 1e-9), ends[1500] * (1 + 1e-9), ends[-1] * 2):
        assert _ends_before(segments, gap) == int(np.count_nonzero(ends < gap))


def test_kv_pressure_preempts_and_still_completes_everything():
    """Four requests of 1000 + 300 tokens at 0, 1, 2, 3 ms; the KV cache holds 3 x 1300 = 3,900 tokens and up to 8
    sequences may run. Step 1 prefills r0; step 2 decodes r0 and prefills r1, r2 and 47 tokens of r3 (the budget of
    2048); step 3 gives r3 849 more tokens, which fills the cache; step 4's three decode tokens do not fit, so r3,
    the newest, is preempted and recomputed later. Nothing is lost."""
    step = StepModel(LLAMA_8B, H100, prior_efficiency("H100", "vllm"))
    engine = EngineConfig(max_num_seqs=8, max_num_batched_tokens=2048, kv_capacity_tokens=3 * 1300)
    workload = Workload.fixed(1000, 300, 1000.0, arrival="constant", duration_s=0.004)
    result = simulate(step, workload, engine)
    assert result.preemptions > 0
    assert result.completed == result.requests == 4
    # r3 finishes last: its E2E is at least the three others' decode time plus its own prefill and decode
    assert result.e2e_ms["p99"] > 1.5 * result.e2e_ms["p50"]


def _scan(step: StepModel, workload: Workload, engine: EngineConfig, factors) -> list:
    capacity = capacity_rps(step, workload, engine)
    return [simulate(step, workload.at_rate(f * capacity), engine, seed=3) for f in factors]


def test_rising_load_raises_the_tail_and_overload_is_unstable():
    """Same seed at every rate (the arrival pattern stretches): TTFT p99 does not fall as the rate rises, the queue
    is stable well below the rough capacity and grows without bound at twice it."""
    step = StepModel(LLAMA_8B, H100, prior_efficiency("H100", "vllm"))
    workload = Workload.fixed(2000, 300, 1.0, duration_s=300.0)
    results = _scan(step, workload, ROOMY, (0.1, 0.3, 0.6, 0.9, 2.0))
    p99 = [r.ttft_ms["p99"] for r in results]
    assert all(b >= a for a, b in zip(p99, p99[1:])), p99
    assert results[0].stable and results[1].stable
    assert not results[-1].stable
    overloaded = results[-1]
    assert overloaded.completed < overloaded.requests
    assert not overloaded.meets(Slos(1e9, 1e9, None, "p50"))  # an unbounded queue never meets anything


def test_goodput_is_at_most_the_completed_rate():
    step = StepModel(LLAMA_8B, H100, prior_efficiency("H100", "vllm"))
    workload = Workload.fixed(2000, 300, 4.0, duration_s=120.0)
    loose = Slos(ttft_ms=10_000, itl_ms=1_000, e2e_ms=None, percentile="p99")
    tight = Slos(ttft_ms=100, itl_ms=10, e2e_ms=None, percentile="p99")
    result = simulate(step, workload, ROOMY, slos=loose)
    window = result.duration_s - result.warmup_s
    completed_rate = result.completed / result.duration_s
    assert result.goodput_rps <= completed_rate * result.duration_s / window
    assert result.goodput_for(tight) < result.goodput_for(loose) <= result.goodput_rps + 1e-12
    # nothing can beat the arrival rate
    assert result.goodput_rps <= workload.rate_rps * 1.2


def test_meets_uses_the_pessimistic_end_and_to_dict_is_json():
    step = StepModel(LLAMA_8B, H100, prior_efficiency("H100", "vllm"))
    result = simulate(step, Workload.fixed(2000, 300, 2.0, duration_s=120.0), ROOMY)
    p95 = result.ttft_ms["interval"]["p95"]
    assert p95[0] <= result.ttft_ms["p95"] <= p95[1]
    # the band is (0.75, 1.5): the pessimistic run is at least 1.5x slower than the nominal one
    assert p95[1] >= 1.4 * result.ttft_ms["p95"]
    between = (result.ttft_ms["p95"] + p95[1]) / 2
    assert not result.meets(Slos(between, None, None, "p95"))
    assert result.meets(Slos(p95[1] * 1.001, None, None, "p95"))
    assert result.margin(Slos(p95[1] + 5, None, None, "p95"))["ttft_ms"] == pytest.approx(5)
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["ttft_ms"]["interval"]["p95"] == pytest.approx(p95)
    again = SimResult.from_dict(json.loads(text))
    assert again.to_dict() == result.to_dict() and again.meets(Slos(p95[1] * 1.001, None, None, "p95"))


def test_max_rate_meeting_finds_the_edge():
    step = StepModel(LLAMA_8B, H100, prior_efficiency("H100", "vllm"))
    workload = Workload.fixed(2000, 300, 1.0, duration_s=200.0)
    slos = Slos(ttft_ms=800, itl_ms=60, e2e_ms=None, percentile="p95")
    rate, result = max_rate_meeting(step, workload, ROOMY, slos)
    assert rate > 0 and result.meets(slos)
    assert result.rate_rps == pytest.approx(rate)
    assert not simulate(step, workload.at_rate(rate * 1.3), ROOMY).meets(slos)
    # a bracket whose upper end still meets is widened: the same edge, within the bisection's few per cent
    widened, _ = max_rate_meeting(step, workload, ROOMY, slos, hi=rate / 3)
    assert widened == pytest.approx(rate, rel=0.1)
    impossible = Slos(ttft_ms=1.0, itl_ms=None, e2e_ms=None, percentile="p50")
    assert max_rate_meeting(step, workload, ROOMY, impossible)[0] == 0.0


def test_a_slow_device_is_searched_with_enough_requests():
    """5 TFLOPS and 50 GB/s: a 2,000-token prefill takes 2000 x 15.01e9 / 5e12 = 6.0 s, so the rough capacity is
    about 0.1 requests/s and the bracket starts near 0.0005/s, where 600 s hold 0.3 requests on average. Probes
    and the answer are stretched to 200 requests, so an SLO met unloaded gives a positive rate."""
    step = StepModel(LLAMA_8B, Device("slow", 1, 5.0, 50.0, None, None), UNIT)
    workload = Workload.fixed(2000, 50, 1.0, duration_s=600.0)
    rate, result = max_rate_meeting(step, workload, ROOMY, Slos(ttft_ms=20_000, itl_ms=None, e2e_ms=None,
                                                                percentile="p50"))
    assert rate > 0 and result.meets(Slos(20_000, None, None, "p50"))
    assert result.requests >= 150


def test_thirty_minutes_at_4_rps_simulates_in_seconds():
    """7,200 requests of 2000/300 tokens (Llama-3.1-8B on one H100, vLLM prior), three runs (nominal and the two
    band ends) with bootstraps: the brief asks for a few seconds on 2 cores; the bound is generous."""
    step = StepModel(LLAMA_8B, H100, prior_efficiency("H100", "vllm"))
    workload = Workload.fixed(2000, 300, 4.0, duration_s=1800.0)
    started = time.perf_counter()
    result = simulate(step, workload, ROOMY)
    elapsed = time.perf_counter() - started
    assert elapsed < 20.0, f"a 30-minute workload took {elapsed:.2f} s to simulate"
    assert result.requests == pytest.approx(7200, rel=0.05) and result.stable
    print(f"30-minute workload simulated in {elapsed:.2f} s")


def test_engine_and_slo_errors_are_one_line():
    with pytest.raises(SimulationError) as seqs:
        EngineConfig(max_num_seqs=256, max_num_batched_tokens=128, kv_capacity_tokens=1000)
    assert str(seqs.value) == "max_num_batched_tokens (128) must be at least max_num_seqs (256)"
    with pytest.raises(SimulationError) as percentile:
        Slos(100, None, None, "p42")
    with pytest.raises(SimulationError) as too_long:
        simulate(StepModel(LLAMA_8B, H100, UNIT), one_request(2000, 300), EngineConfig(8, 512, 1000))
    assert "does not fit the KV cache of 1000 tokens" in str(too_long.value)
    for error in (seqs, percentile, too_long):
        assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------- workloads


def test_length_distributions_by_hand():
    """Bins [100, 300] weight 1 and 500 weight 3 -> weights 0.25 / 0.75, mean 0.25 x 200 + 0.75 x 500 = 425."""
    lengths = LengthDistribution.histogram([(100, 300), 500], [1, 3])
    assert lengths.weights == (0.25, 0.75)
    assert lengths.mean == 425.0 and lengths.max == 500
    drawn = lengths.sample(np.random.default_rng(0), 20_000)
    assert set(np.unique(drawn[drawn != 500])) <= set(range(100, 301))
    assert np.mean(drawn == 500) == pytest.approx(0.75, abs=0.02)
    assert LengthDistribution.fixed(7).sample(np.random.default_rng(0), 3).tolist() == [7, 7, 7]


def test_arrivals():
    constant = Workload.fixed(10, 10, 4.0, arrival="constant", duration_s=10.0)
    assert constant.arrival_times(np.random.default_rng(0)).tolist() == [i / 4 for i in range(40)]
    poisson = Workload.fixed(10, 10, 4.0, duration_s=1000.0).arrival_times(np.random.default_rng(0))
    assert poisson.size == pytest.approx(4000, rel=0.05)  # 4000 +- 63 (one sd)
    assert poisson.max() < 1000.0


def test_example_workload_file_loads_and_round_trips(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "llm" / "workload.yaml"
    workload = load_workload(example)
    # prompt: 0.5 x 1500 + 0.4 x 3000 + 0.1 x 6000 = 2550; output: 0.8 x 250 + 0.2 x 700 = 340
    assert workload.prompt_tokens.mean == pytest.approx(2550)
    assert workload.output_tokens.mean == pytest.approx(340)
    assert (workload.rate_rps, workload.arrival, workload.shared_prefix_fraction) == (4, "poisson", 0.1)
    again = Workload.from_dict(json.loads(json.dumps(workload.to_dict())))
    assert again.prompt_tokens.lows == workload.prompt_tokens.lows == (1000, 2000, 6000)
    assert again.prompt_tokens.weights == pytest.approx(workload.prompt_tokens.weights)
    assert (again.rate_rps, again.duration_s, again.output_tokens.mean) == (4, 600, pytest.approx(340))
    as_json = tmp_path / "w.json"
    as_json.write_text(json.dumps({"prompt_tokens": 2000, "output_tokens": {"fixed": 300}, "rate_rps": 2}))
    assert load_workload(as_json) == Workload.fixed(2000, 300, 2)


@pytest.mark.parametrize("text, message", [
    ("prompt_tokens: 2000\noutput_tokens: 300\nrate_rps: -1\n", "rate_rps: Input should be greater than 0"),
    ("output_tokens: 300\nrate_rps: 1\n", "prompt_tokens: Field required"),
    ("prompt_tokens: 2000\noutput_tokens: 300\nrate_rps: 1\narrival: bursty\n",
     "arrival: Input should be 'poisson' or 'constant'"),
    ("prompt_tokens: {histogram: [{tokens: [500, 100], weight: 1}]}\noutput_tokens: 300\nrate_rps: 1\n",
     "prompt_tokens.histogram.0.tokens: a bin is a length >= 1 or a range [low, high] with 1 <= low <= high"),
    ("prompt_tokens: 0\noutput_tokens: 300\nrate_rps: 1\n", "prompt_tokens: a token length must be at least 1"),
    ("prompt_tokens: 2000\noutput_tokens: 300\nrate_rps: 1\nqps: 3\n", "qps: Extra inputs are not permitted"),
    ("prompt_tokens: [2000\n", "not valid YAML (line 2)"),
    ("- 2000\n", "a workload file is a mapping with prompt_tokens, output_tokens and rate_rps"),
])
def test_a_malformed_workload_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "workload.yaml"
    path.write_text(text)
    with pytest.raises(WorkloadError) as error:
        load_workload(path)
    assert str(error.value) == f"{path}: {message}"


def test_a_missing_workload_file_is_one_line(tmp_path):
    with pytest.raises(WorkloadError) as error:
        load_workload(tmp_path / "absent.yaml")
    assert str(error.value).startswith(f"{tmp_path / 'absent.yaml'}: cannot read the workload file")
    assert "\n" not in str(error.value)
