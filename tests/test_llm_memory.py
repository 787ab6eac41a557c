"""advisor.llm.precision and advisor.llm.memory: support rules, weight bytes and memory fits, checked by hand.

Device memory figures are what PyTorch reports for the whole card (vLLM's "total_gpu_memory"): 79.22 GiB on an
80 GB H100 (vllm-project/vllm PR 10511's log) and 22.49 GiB on a 24 GB L4 (23,034 MiB).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from advisor.llm.architecture import load_architecture
from advisor.llm.memory import GIB, MemoryFit, fit, fit_map, kv_bytes_per_sequence, tensor_parallel_degrees, \
    weight_bytes_per_device
from advisor.llm.precision import GPU_COMPUTE_CAPABILITY, KV_DTYPES, PRECISIONS, DeviceCaps, PrecisionError, \
    kv_unsupported_reason, precision_named

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "llm"
H100_GIB = 79.22
L4_GIB = 22.49

BF16, FP8, INT4 = precision_named("bf16"), precision_named("fp8"), precision_named("int4-wo")


def gpu(model: str) -> DeviceCaps:
    return DeviceCaps("gpu", model, None)


@pytest.fixture(scope="module")
def llama8b():
    return load_architecture(EXAMPLES / "llama-3.1-8b")


@pytest.fixture(scope="module")
def llama70b():
    return load_architecture(EXAMPLES / "llama-3.1-70b")


# --- precision ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["T4", "A10G", "A100"])
def test_fp8_never_on_gpus_without_fp8_tensor_cores(model):
    reason = FP8.unsupported_reason(gpu(model))
    assert reason.startswith(f"fp8 needs compute capability >= 8.9; {model} is {GPU_COMPUTE_CAPABILITY[model]:.1f}")
    assert kv_unsupported_reason("fp8", gpu(model)).startswith("an fp8 KV cache needs compute capability >= 8.9")


@pytest.mark.parametrize("model", ["L4", "L40S", "H100", "H200"])
def test_fp8_on_ada_and_hopper(model):
    assert FP8.unsupported_reason(gpu(model)) is None
    assert kv_unsupported_reason("fp8", gpu(model)) is None
    assert FP8.vllm_quantization == "fp8"


def test_bf16_needs_ampere():
    """T4 is 7.5: fp16 only."""
    assert BF16.unsupported_reason(gpu("T4")).startswith("bf16 needs compute capability >= 8.0; T4 is 7.5")
    assert precision_named("fp16").unsupported_reason(gpu("T4")) is None
    assert kv_unsupported_reason("bf16", gpu("T4")) is not None and kv_unsupported_reason("fp16", gpu("T4")) is None
    assert BF16.unsupported_reason(gpu("A10G")) is None and BF16.unsupported_reason(gpu("A100")) is None


def test_catalogue_capability_wins_and_unknown_gpus_say_so():
    assert FP8.unsupported_reason(DeviceCaps("gpu", "B200", 10.0)) is None
    assert FP8.unsupported_reason(DeviceCaps("gpu", "H100", 8.0)) is not None  # the catalogue's figure is used
    assert "compute capability of GPU MI300X is unknown" in BF16.unsupported_reason(gpu("MI300X"))


def test_cpu_rules():
    """CPUs: fp32 anywhere, bf16 only with avx512_bf16/AMX, int4/int8 weight-only (vLLM's GPTQ CPU kernels: x86)."""
    zen3 = DeviceCaps("cpu", "znver3", None, ("avx2", "fma"))
    sapphire = DeviceCaps("cpu", "sapphirerapids", None, ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
    graviton = DeviceCaps("cpu", "neoverse-v1", None, ("neon", "sve", "bf16"))
    assert precision_named("fp32").unsupported_reason(zen3) is None
    assert precision_named("fp32").unsupported_reason(gpu("H100")).startswith("fp32 is offered on CPUs only")
    assert BF16.unsupported_reason(zen3) == "bf16 on a CPU needs avx512_bf16 or amx_bf16; znver3 has avx2, fma"
    assert BF16.unsupported_reason(sapphire) is None
    assert FP8.unsupported_reason(sapphire).startswith("fp8 is not offered on CPUs")
    assert INT4.unsupported_reason(graviton) is None and INT4.engines_for(graviton) == ("onnxruntime-genai",)
    assert INT4.engines_for(zen3) == ("onnxruntime-genai", "vllm")
    assert precision_named("int8-wo").unsupported_reason(graviton).startswith("int8-wo on a CPU needs avx2")
    assert kv_unsupported_reason("fp32", zen3) is None and kv_unsupported_reason("bf16", zen3) is not None
    assert kv_unsupported_reason("fp32", gpu("H100")) is not None


def test_int4_weight_bytes_at_group_128():
    """8 B weights at 4 bits plus, per group of 128, an fp16 scale (16 bits) and a packed 4-bit zero point:
    4 + 20/128 = 4.15625 bits; 8e9 x 4.15625 / 8 = 4,156,250,000 bytes."""
    assert INT4.bits_per_weight == 4.15625
    assert INT4.weight_bytes(8_000_000_000) == 4_156_250_000
    assert BF16.weight_bytes(8_000_000_000) == 16_000_000_000
    assert precision_named("int8-wo").weight_bytes(1_280) == 1_280 * (8 + 24 / 128) / 8


def test_model_weight_bytes_keep_embeddings_in_16_bits(llama8b):
    """Llama-3.1-8B int4: the 32 layers' matrices (32 x 218,103,808 = 6,979,321,856) at 4.15625 bits =
    3,625,975,808 bytes; the rest (8,030,261,248 - 6,979,321,856 = 1,050,939,392: embeddings, lm_head, norms)
    at 2 bytes = 2,101,878,784; total 5,727,854,592 bytes. fp8: 6,979,321,856 + 2,101,878,784 = 9,081,200,640."""
    assert llama8b.params_quantizable == 6_979_321_856
    assert llama8b.weight_bytes(INT4) == 5_727_854_592
    assert llama8b.weight_bytes(FP8) == 9_081_200_640
    assert llama8b.weight_bytes(BF16) == 2 * 8_030_261_248


def test_every_variant_says_where_it_runs():
    names = [p.name for p in PRECISIONS]
    assert names == ["bf16", "fp16", "fp8", "int8-wo", "int4-wo", "fp32"]
    assert {p.vllm_quantization for p in PRECISIONS} == {None, "fp8", "gptq", "awq"}
    for precision in PRECISIONS:
        assert precision.engines or precision.cpu_engines
        json.dumps(precision.to_dict())
    assert set(KV_DTYPES) >= {"fp16", "bf16", "fp8"} and KV_DTYPES["fp8"] == 1
    with pytest.raises(PrecisionError, match="unknown precision 'int2'"):
        precision_named("int2")


# --- memory -------------------------------------------------------------------------------------------------------

def test_70b_bf16_does_not_fit_one_h100(llama70b):
    """Weights 70,553,706,496 x 2 bytes = 141,107,412,992 bytes = 131.4 GiB; usable 79.22 x 0.9 = 71.3 GiB."""
    result = fit(llama70b, BF16, "bf16", H100_GIB, 1, 8192, device_name="H100")
    assert not result.fits and result.max_concurrent_sequences == 0
    assert result.reason == "needs 131.4 GiB of weights in bf16; 1x H100 has 71.3 GiB usable (79.2 GiB x 0.90)"


def test_70b_bf16_fits_four_h100(llama70b):
    """TP 4 at 8,192 tokens, per device:
    usable      79.22 x 0.9                                        = 71.298 GiB
    weights     141,107,412,992 / 4 bytes                          = 32.854 GiB
    activation  8192 x 2 bytes x (2 x 8192 + 3 x 28672) = 1,677,721,600 bytes = 1.5625 GiB
                + sampler 256 x 128256 x 4 bytes x 4 = 525,336,576 bytes = 0.489 GiB  -> 2.052 GiB
    overhead    1.0 context + 0.5 graphs + 0.5 allocator + 1.8 NCCL = 3.8 GiB
    KV budget   71.298 - 32.854 - 2.052 - 3.8                      = 32.592 GiB
    per seq     2 x 80 layers x (8 / 4) KV heads x 128 x 2 bytes x 8192 = 671,088,640 bytes = 0.625 GiB
    sequences   floor(32.592 / 0.625) = floor(52.15)               = 52"""
    result = fit(llama70b, BF16, "bf16", H100_GIB, 4, 8192, device_name="H100")
    assert result.fits and result.reason is None
    assert result.weights_gib == pytest.approx(141_107_412_992 / 4 / GIB)
    assert result.activation_gib == pytest.approx((1_677_721_600 + 525_336_576) / GIB)
    assert result.overhead_gib == pytest.approx(3.8)
    assert result.kv_gib_per_sequence == 0.625
    assert result.kv_budget_gib == pytest.approx(32.592, abs=1e-3)
    assert result.max_concurrent_sequences == 52
    data = result.to_dict()
    assert data["max_concurrent_sequences"] == 52 and data["overhead_breakdown_gib"]["nccl"] == 1.8
    assert json.loads(json.dumps(data)) == data


def test_kv_budget_against_vllms_own_log(llama8b):
    """vLLM's memory profile of Llama-3-8B on an H100 (PR 10511; 3.1-8B has the same shapes), in GiB:
    TP 1: can use 71.29, weights 14.96, non-torch 1.79, activation peak 1.26 -> KV cache 53.29 (logged)
    TP 2: can use 71.29, weights 7.48, non-torch 3.58, activation peak 1.26 -> 71.29 - 12.32 = 58.97
    The planner's priors land within 0.5 GiB of both."""
    assert fit(llama8b, BF16, "bf16", H100_GIB, 1, 8192).weights_gib == pytest.approx(14.96, abs=0.01)
    assert fit(llama8b, BF16, "bf16", H100_GIB, 1, 8192).kv_budget_gib == pytest.approx(53.29, abs=0.5)
    assert fit(llama8b, BF16, "bf16", H100_GIB, 2, 8192).kv_budget_gib == pytest.approx(58.97, abs=0.5)


def test_tensor_parallel_rules(llama70b):
    """vLLM: TP divides the attention heads and the MLP width; KV heads are split or replicated."""
    result = fit(llama70b, BF16, "bf16", H100_GIB, 3, 8192)
    assert not result.fits and result.max_concurrent_sequences == 0
    assert result.reason == "tensor parallel 3 does not divide the 64 attention heads (vLLM requires it)"
    assert tensor_parallel_degrees(llama70b, 8) == [1, 2, 4, 8]
    assert tensor_parallel_degrees(llama70b, 4) == [1, 2, 4]
    qwen7b = load_architecture(EXAMPLES / "qwen2.5-7b")  # 28 heads: 8 does not divide them
    assert tensor_parallel_degrees(qwen7b, 8) == [1, 2, 4]
    # Qwen2.5-72B's MLP (29568) split 2, 4 or 8 ways is not whole 128-weight groups: an AWQ/GPTQ checkpoint
    # needs padding (Qwen's own -AWQ release pads it to 29696) before vLLM can shard it.
    qwen72b = load_architecture(EXAMPLES / "qwen2.5-72b")
    assert tensor_parallel_degrees(qwen72b, 8) == [1, 2, 4, 8]
    assert tensor_parallel_degrees(qwen72b, 8, group_size=128) == [1]


def test_kv_heads_replicated_beyond_their_count(tmp_path):
    """8 heads of 16, 2 KV heads, h 128, 2 layers; at TP 4 each device holds one KV head (replicated twice), so
    per device the cache is 2 x 2 layers x 1 head x 16 x 2 bytes = 128 bytes per token, and the k/v projections
    (2 layers x 2 x 128 x 32 = 16,384 params, 32,768 bytes in bf16) count 1/2 per device, not 1/4."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
              "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
              "vocab_size": 64, "max_position_embeddings": 4096}
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch = load_architecture(tmp_path)
    assert tensor_parallel_degrees(arch, 8) == [1, 2, 4, 8]
    assert kv_bytes_per_sequence(arch, "bf16", 4, 16) == 128 * 16
    assert kv_bytes_per_sequence(arch, "bf16", 2, 16) == 128 * 16
    assert kv_bytes_per_sequence(arch, "bf16", 1, 16) == 256 * 16
    expected = arch.weight_bytes(BF16) / 4 + 32_768 / 2 - 32_768 / 4
    assert weight_bytes_per_device(arch, BF16, 4) == pytest.approx(expected)


def test_llama_8b_int4_fits_an_l4(llama8b):
    """L4 24 GB (22.49 GiB): usable 20.241; weights 5,727,854,592 bytes = 5.334 GiB;
    activation 8192 x 2 x (8192 + 43008) = 838,860,800 bytes = 0.781 + sampler 0.489 = 1.271 GiB; overhead 2.0;
    budget 20.241 - 5.334 - 1.271 - 2.0 = 11.636 GiB; fp16 KV 131,072 bytes x 8192 = 1 GiB per sequence -> 11."""
    result = fit(llama8b, INT4, "fp16", L4_GIB, 1, 8192, device_name="L4")
    assert result.fits
    assert result.weights_gib == pytest.approx(5_727_854_592 / GIB)
    assert result.kv_gib_per_sequence == 1.0
    assert result.max_concurrent_sequences == 11


def test_fit_map_is_monotone_in_context(llama8b):
    contexts = [512, 1024, 2048, 4096, 8192, 16384, 32768, 131072]
    sequences = fit_map(llama8b, INT4, "fp16", L4_GIB, 1, contexts)
    assert list(sequences) == contexts
    values = list(sequences.values())
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] > values[-1]
    assert sequences[8192] == 11 and sequences[131072] == 0  # 16 GiB per sequence > 11.6 GiB of budget
    assert fit_map(llama8b, INT4, "fp8", L4_GIB, 1, [8192])[8192] == 23  # 0.5 GiB each: floor(11.636 / 0.5)


def test_sliding_window_caps_kv_per_sequence(tmp_path):
    """Mistral-7B-v0.1 shapes (window 4096): beyond 4096 tokens a sequence's cache stops growing."""
    config = json.loads((EXAMPLES / "mistral-7b-v0.3" / "config.json").read_text())
    config["sliding_window"] = 4096
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch = load_architecture(tmp_path)
    at = {context: fit(arch, BF16, "bf16", H100_GIB, 1, context) for context in (2048, 4096, 16384, 32768)}
    assert at[2048].kv_gib_per_sequence == pytest.approx(at[4096].kv_gib_per_sequence / 2)
    assert at[4096].kv_gib_per_sequence == at[16384].kv_gib_per_sequence == at[32768].kv_gib_per_sequence
    assert at[32768].max_concurrent_sequences == at[4096].max_concurrent_sequences > 0


def test_other_refusals(llama8b):
    long = fit(llama8b, BF16, "bf16", H100_GIB, 1, 200_000)
    assert long.reason == "context 200000 exceeds the model's max_position_embeddings 131072"
    tight = fit(llama8b, BF16, "bf16", 18.0, 1, 8192)  # 16.2 usable: 14.96 of weights + 3.27 leave nothing
    assert not tight.fits and "leave no room for the KV cache" in tight.reason
    cpu = fit(llama8b, INT4, "fp32", 64.0, 2, 8192, kind="cpu")
    assert cpu.reason == "tensor parallel 2 is planned for GPUs only; use 1"
    cpu = fit(llama8b, INT4, "fp32", 64.0, 1, 8192, kind="cpu")
    assert cpu.fits and cpu.overhead_breakdown_gib == {"runtime": 1.0}
    with pytest.raises(ValueError):
        fit(llama8b, BF16, "bf16", H100_GIB, 1, 8192, utilisation=1.5)
    with pytest.raises(ValueError):
        fit(llama8b, BF16, "bf16", H100_GIB, 0, 8192)


def test_memory_fit_is_frozen(llama8b):
    result = fit(llama8b, BF16, "bf16", H100_GIB, 1, 8192)
    assert isinstance(result, MemoryFit)
    with pytest.raises(AttributeError):
        result.fits = False
