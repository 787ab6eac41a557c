"""advisor.llm.perf: the per-step roofline, tensor-parallel communication, MoE bytes, priors and the fit, checked by
hand.

Llama-3.1-8B figures used below (its public config.json; examples/llm/llama-3.1-8b): 8,030,261,248 parameters, of
which 128,256 x 4,096 = 525,336,576 are the input embedding (looked up, not multiplied), so
linear FLOPs per token = 2 x (8,030,261,248 - 525,336,576) = 15,009,849,344; attention FLOPs per attended token =
4 x 32 layers x 32 heads x 128 = 524,288; bf16 weights = 16,060,522,496 bytes; bf16 KV per token =
2 x 32 x 8 x 128 x 2 = 131,072 bytes.
"""

from __future__ import annotations

import json

import pytest

from advisor.llm.perf import (Device, Efficiency, FitError, ModelWork, PerfError, StepModel, StepPoint, fit_efficiency,
                              gpu_key, load_priors, prior_efficiency)

UNIT = Efficiency(1.0, 1.0, 1.0, 0.0, (1.0, 1.0), "test: efficiency 1")
H100 = Device("H100", 1, 989.4, 3350.0, None, None)

LLAMA_8B = ModelWork(linear_flops_per_token=15_009_849_344, attention_flops_per_token_context=524_288,
                     weight_bytes=16_060_522_496, active_weight_bytes=16_060_522_496, kv_bytes_per_token=131_072,
                     layers=32, hidden_size=4096, activation_bytes=2)


def dense(weight_bytes: float, kv_bytes: float = 0.0, layers: int = 32, hidden: int = 4096) -> ModelWork:
    return ModelWork(weight_bytes, 524_288, weight_bytes, weight_bytes, kv_bytes, layers, hidden, 2)


def test_decode_step_of_a_16_gb_model_is_memory_bound_at_4_8_ms():
    """16 GB of bf16 weights read once at 3.35 TB/s: 16e9 / 3.35e12 = 4.776 ms. With a 1,000-token context the KV
    read adds 131,072 x (1000 + 1 new) = 131.2 MB: (16e9 + 131,203,072) / 3.35e12 = 4.8153 ms. Compute is
    (2 x 8e9 + 524,288 x 1000) / 989.4e12 = 0.0167 ms, far below: memory-bound."""
    no_kv = StepModel(dense(16e9), H100, UNIT)
    assert no_kv.decode_step_ms(1, 1000) == pytest.approx(4.7761, rel=1e-4)
    with_kv = StepModel(dense(16e9, 131_072), H100, UNIT)
    assert with_kv.decode_step_ms(1, 1000) == pytest.approx(4.8153, rel=1e-4)
    assert with_kv.regime(0, 0, 1, 1000) == "memory"


def test_prefill_of_2000_tokens_is_compute_bound():
    """Llama-3.1-8B, 2,000 prompt tokens in one step, each attending (2000 + 1) / 2 = 1000.5 tokens on average:
    FLOPs = 15,009,849,344 x 2000 + 524,288 x 2000 x 1000.5 = 3.00197e13 + 1.04910e12 = 3.10688e13;
    / 989.4e12 = 31.4016 ms. Memory: (16,060,522,496 + 131,072 x (1000.5 + 2000)) / 3.35e12 = 4.9116 ms.
    At compute efficiency 0.5 and 0.5 ms overhead: 2 x 31.4016 + 0.5 = 63.303 ms."""
    model = StepModel(LLAMA_8B, H100, UNIT)
    assert model.prefill_ms(2000) == pytest.approx(31.4016, rel=1e-4)
    assert model.regime(2000, 1000.5, 0, 0) == "compute"
    half = StepModel(LLAMA_8B, H100, Efficiency(0.5, 1.0, 1.0, 0.5, (1.0, 1.0), "test"))
    assert half.prefill_ms(2000) == pytest.approx(63.303, rel=1e-4)


def test_chunked_prefill_sums_its_chunks():
    """2,000 tokens in chunks of 512, 512, 512, 464: chunk i after c computed tokens attends c + (k + 1) / 2."""
    model = StepModel(LLAMA_8B, H100, UNIT)
    by_hand = sum(model.step_ms(k, c + (k + 1) / 2, 0, 0) for c, k in ((0, 512), (512, 512), (1024, 512),
                                                                        (1536, 464)))
    assert model.prefill_ms(2000, max_batched_tokens=512) == pytest.approx(by_hand, rel=1e-12)
    # later chunks attend more tokens: chunking costs a little more attention than one step, never less
    assert model.prefill_ms(2000, 512) > model.prefill_ms(2000)


def test_one_device_has_no_communication_term():
    """TP = 1: a link figure changes nothing (no all-reduce happens)."""
    alone = StepModel(LLAMA_8B, H100, UNIT)
    linked = StepModel(LLAMA_8B, Device("H100", 1, 989.4, 3350.0, 450.0, "nvswitch"), UNIT)
    for args in ((0, 0, 1, 1001), (2000, 1000.5, 0, 0), (512, 800.0, 32, 64_000)):
        assert alone.step_ms(*args) == linked.step_ms(*args)


def test_tensor_parallel_two_adds_the_ring_all_reduce():
    """70 GB of weights over 2 H100s: memory (70e9 / 2) / 3.35e12 = 10.4478 ms. Communication, 80 layers x 2
    all-reduces of 1 token x 8192 x 2 bytes = 16,384 bytes over 450 GB/s: ring 2 (n-1)/n x S / B =
    16,384 / 450e9 = 3.641e-5 ms each, x 160 = 0.005825 ms; latency 160 x 2 (n-1) x 0.5 us = 0.16 ms.
    Total 10.4478 + 0.16 + 0.005825 = 10.6137 ms."""
    work = dense(70e9, 0.0, layers=80, hidden=8192)
    tp2 = StepModel(work, Device("H100", 2, 989.4, 3350.0, 450.0, "nvswitch"), UNIT)
    assert tp2.decode_step_ms(1, 1) == pytest.approx(10.6137, rel=1e-4)
    # 1,000 tokens in the step: the bandwidth term grows 1000x (5.825 ms), the latency term does not
    flops_ms = 1000 * 70e9 / 2 / 989.4e12 * 1e3  # 35.375 ms of compute: compute-bound
    assert tp2.step_ms(0, 0, 1000, 1000) == pytest.approx(flops_ms + 0.16 + 5.825, rel=1e-3)


def test_missing_link_figure_falls_back_to_pcie_and_says_so():
    model = StepModel(dense(70e9, 0.0, 80, 8192), Device("A10G", 4, 125.0, 600.0, None, None), UNIT)
    assert any("PCIe 4.0 x16" in note for note in model.notes)
    # PCIe: 160 all-reduces x 2 x 3 steps x 2.0 us = 1.92 ms of latency on top of 70e9 / 4 / 600e9 = 29.167 ms
    assert model.decode_step_ms(1, 1) == pytest.approx(29.1667 + 1.92 + 160 * 1.5 * 16_384 / 31.5e9 * 1e3,
                                                      rel=1e-4)


def test_moe_step_reads_the_experts_its_tokens_use_at_most_all():
    """Total 93 GB, 25 GB per token (a Mixtral-like split): one token reads 25 GB (7.463 ms at 3.35 TB/s);
    8 tokens would read 200 GB, capped at all 93 GB (27.761 ms)."""
    moe = ModelWork(2 * 12.9e9, 0.0, 93e9, 25e9, 0.0, 32, 4096, 2)
    model = StepModel(moe, H100, UNIT)
    assert model.decode_step_ms(1, 1) == pytest.approx(25e9 / 3.35e12 * 1e3, rel=1e-9)
    assert model.decode_step_ms(8, 1) == pytest.approx(93e9 / 3.35e12 * 1e3, rel=1e-9)
    assert model.decode_step_ms(3, 1) == pytest.approx(75e9 / 3.35e12 * 1e3, rel=1e-9)


def test_decode_line_matches_step_ms():
    """The two lines of a decode step (what the simulation sums in closed form) give step_ms back."""
    model = StepModel(LLAMA_8B, Device("H100", 2, 989.4, 3350.0, 450.0, "nvlink"),
                      Efficiency(0.5, 0.8, 0.7, 0.4, (0.8, 1.3), "test"))
    a_c, b_c, a_m, b_m, fixed = model.decode_line(64)
    for context in (10, 5_000, 100_000, 2_000_000):
        assert max(a_c + b_c * context, a_m + b_m * context) + fixed == pytest.approx(
            model.step_ms(0, 0, 64, context), rel=1e-12)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(PerfError) as bad_kind:
        Device("H100", 2, 989.4, 3350.0, 450.0, "infiniband")
    assert "interconnect_kind must be one of nvswitch, nvlink, pcie" in str(bad_kind.value)
    with pytest.raises(PerfError) as bad_work:
        ModelWork(1e9, 0.0, 1e9, 2e9, 0.0, 1, 1, 2)
    with pytest.raises(PerfError) as bad_band:
        Efficiency(0.5, 0.7, 0.7, 0.5, (1.1, 1.5), "x")
    for error in (bad_kind, bad_work, bad_band):
        assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------- fit


def _synthetic(model: StepModel) -> list[StepPoint]:
    """Steps of every kind an engine runs: decode of 1..256 sequences at short and long contexts (memory-bound, the
    memory time varying with the KV read), prefill chunks (compute-bound) and mixed steps."""
    points = []
    for batch in (1, 4, 16, 64, 256):
        for context in (500, 4000, 16000):
            points.append((0, 0.0, batch, batch * context))
    for chunk in (256, 1024, 2048, 8192):
        points.append((chunk, chunk / 2 + 100, 0, 0))
        points.append((chunk, chunk / 2 + 3000, 32, 32 * 2000))
    return [StepPoint(p, c, d, ctx, model.step_ms(p, c, d, ctx)) for p, c, d, ctx in points]


def test_fit_recovers_known_factors_from_synthetic_steps():
    """Points generated by the model itself at compute 0.6, bandwidth 0.8, interconnect 0.7 and 0.4 ms overhead
    on 2 devices: non-negative least squares with regime assignment gives them back."""
    device = Device("H100", 2, 989.4, 3350.0, 450.0, "nvswitch")
    truth = Efficiency(0.6, 0.8, 0.7, 0.4, (1.0, 1.0), "truth")
    points = _synthetic(StepModel(LLAMA_8B, device, truth))
    fitted = fit_efficiency(points, LLAMA_8B, device)
    assert fitted.compute == pytest.approx(0.6, rel=1e-6)
    assert fitted.bandwidth == pytest.approx(0.8, rel=1e-6)
    assert fitted.interconnect == pytest.approx(0.7, rel=1e-6)
    assert fitted.step_overhead_ms == pytest.approx(0.4, abs=1e-6)
    assert fitted.source == "fitted on 23 measurements of H100 x2/vllm"
    assert Efficiency.from_dict(json.loads(json.dumps(fitted.to_dict()))) == fitted
    # exact points: the band is the floor widened by 1 + 1/sqrt(23) = 1.2085
    assert fitted.relative_interval == pytest.approx((0.95 / 1.2085, 1.05 * 1.2085), rel=1e-3)


def test_fit_keeps_the_prior_for_what_no_point_exercises():
    """Decode steps on one device say nothing of compute or the link: those stay at the prior's value."""
    device = Device("H100", 1, 989.4, 3350.0, None, None)
    truth = Efficiency(0.6, 0.75, 0.7, 0.3, (1.0, 1.0), "truth")
    model = StepModel(LLAMA_8B, device, truth)
    points = [StepPoint(0, 0.0, b, b * c, model.step_ms(0, 0, b, b * c)) for b in (1, 8, 32) for c in (500, 8000)]
    prior = Efficiency(0.42, 0.5, 0.66, 1.0, (0.8, 1.4), "prior: test")
    fitted = fit_efficiency(points, LLAMA_8B, device, prior=prior)
    assert fitted.bandwidth == pytest.approx(0.75, rel=1e-6)
    assert fitted.step_overhead_ms == pytest.approx(0.3, abs=1e-6)
    assert (fitted.compute, fitted.interconnect) == (pytest.approx(0.42), pytest.approx(0.66))


def test_fit_needs_three_points():
    with pytest.raises(FitError) as error:
        fit_efficiency([StepPoint(0, 0.0, 1, 100, 5.0)], LLAMA_8B, H100)
    assert str(error.value) == "fitting efficiency factors needs at least 3 measured steps, got 1"


# ---------------------------------------------------------------------------------------------------- priors


def test_gpu_key_reads_catalogue_and_driver_names():
    assert [gpu_key(n) for n in ("H100", "NVIDIA H100 80GB HBM3", "h100-sxm", "L40S", "L4", "A10G", "Tesla T4")] == \
        ["H100", "H100", "H100", "L40S", "L4", "A10G", "T4"]


def test_prior_efficiency_says_what_it_rests_on():
    measured = prior_efficiency("H100", "vllm")
    assert measured.source.startswith("prior: vllm published figures (measured on H100;")
    assert (measured.compute, measured.bandwidth, measured.step_overhead_ms) == (0.46, 0.808, 0.54)
    assert measured.relative_interval == (0.75, 1.5)
    other = prior_efficiency("L40S", "vllm")
    assert "not L40S" in other.source and other.relative_interval == (0.7, 1.7)
    for device, engine in (("znver3", "vllm"), ("H100", "some-engine")):
        assumed = prior_efficiency(device, engine)
        assert assumed.source.startswith("prior: assumed")
        assert (assumed.compute, assumed.bandwidth, assumed.relative_interval) == (0.5, 0.7, (0.6, 2.0))


def test_priors_reduce_as_their_records_say():
    """Recompute every reduction in priors.json from its own raw figures."""
    priors = load_priors()
    rows = {m["id"]: m for m in priors["measurements"]}
    for m in rows.values():
        assert m["source"].startswith("https://") and m["date"] and m["gpu"] and m["engine"] and "value" in m
    # vLLM: batch-1 decode TPOT = W / (B e) + o on two GPUs, two unknowns
    h100, a100 = rows["vllm-h100-llama8b-c1"], rows["vllm-a100-llama8b-c1"]
    ideal_h = h100["reduction"]["weight_bytes"] / (h100["reduction"]["memory_bandwidth_gbs"] * 1e9) * 1e3
    ideal_a = a100["reduction"]["weight_bytes"] / (a100["reduction"]["memory_bandwidth_gbs"] * 1e9) * 1e3
    assert ideal_h == pytest.approx(h100["reduction"]["ideal_decode_ms"], rel=1e-4)
    assert ideal_a == pytest.approx(a100["reduction"]["ideal_decode_ms"], rel=1e-4)
    measured_h, measured_a = h100["value"], 1000.0 / a100["value"]
    efficiency = (ideal_a - ideal_h) / (measured_a - measured_h)
    overhead = measured_h - ideal_h / efficiency
    vllm = priors["engines"]["vllm"]
    assert vllm["bandwidth"]["value"] == pytest.approx(efficiency, abs=0.001)
    assert vllm["step_overhead_ms"]["value"] == pytest.approx(overhead, abs=0.01)
    # TensorRT-LLM: FLOPs per request of 2048 in / 128 out, then the share of the fp8 peak at maximum load
    for rid, linear, attention in (("trtllm-h100-llama8b-fp8-2048-128", 15_009_849_344, 524_288),
                                   ("trtllm-h200-llama8b-fp8-2048-128", 15_009_849_344, 524_288),
                                   ("trtllm-h100x2-llama70b-fp8-2048-128", 139_006_066_688, 2_621_440)):
        row = rows[rid]
        flops = (2048 * linear + attention * 2048 * 2049 / 2 + 127 * linear
                 + attention * sum(range(2049, 2176)))
        assert flops == pytest.approx(row["reduction"]["flops_per_request"], rel=1e-3)
        share = row["value"] / 128 * flops / row["reduction"]["devices"] / (row["reduction"]["peak_tflops"] * 1e12)
        assert share == pytest.approx(row["reduction"]["compute_efficiency"], abs=0.001)
    shares = [rows[r]["reduction"]["compute_efficiency"] for r in rows if r.startswith("trtllm")]
    assert priors["engines"]["tensorrt-llm"]["compute"]["value"] == pytest.approx(sum(shares) / 3, abs=0.001)
    json.dumps(priors)  # plain data


def test_prior_predicts_the_check_measurement_inside_its_band():
    """The L4 point was left out of the factors: Qwen2.5-0.5B (988 MB of bf16 weights) decoding alone on 300 GB/s
    at the vLLM prior: 988e6 / (300e9 x 0.808) + 0.54 ms = 4.616 ms; measured 5.1 ms is 1.10x, inside (0.7, 1.7)."""
    prior = prior_efficiency("L4", "vllm")
    model = StepModel(dense(988e6), Device("L4", 1, 121.0, 300.0, None, None), prior)
    predicted = model.decode_step_ms(1, 1)
    assert predicted == pytest.approx(4.616, rel=1e-3)
    low, high = prior.relative_interval
    assert predicted * low <= 5.1 <= predicted * high
