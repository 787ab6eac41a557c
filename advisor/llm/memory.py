"""Does a model fit a device at a precision, and how many sequences does the KV cache then hold?

vLLM's budget (gpu_worker.determine_available_memory), per device of a tensor-parallel group:

    usable       = device memory x gpu_memory_utilization (0.9 by default)
    kv_budget    = usable - weights - activation peak - overhead
    weights      = all weights at the precision / tp    (attention heads, MLP columns and the vocab are split;
                   k/v projections are replicated when tp > kv heads: each device then holds one kv head)
    kv per seq   = 2 x layers x kv heads per device x head_dim x bytes(kv dtype) x cached tokens
                   kv heads per device = max(1, kv_heads / tp); cached tokens = context rounded up to vLLM's
                   16-token blocks, at most the sliding window in window layers
    sequences    = floor(kv_budget / kv per seq); a fit needs at least one (vLLM refuses to start otherwise:
                   "max seq len ... is larger than the maximum number of tokens that can be stored in KV cache")

Activation peak (vLLM profiles one forward pass of max_num_batched_tokens tokens plus the sampler):

    forward  = max_num_batched_tokens x bytes(activations) x (2h + E_a x 3I + (h x E_a if MoE))
               (residual and normed hidden state, gate/up output and the activated half for the E_a experts a
               token uses; fused MoE keeps an h-wide output per routed expert)
    sampler  = min(max_num_seqs, max_num_batched_tokens) x vocab x 4 bytes x 4 (fp32 logits, probabilities,
               log-probabilities and the top-k/top-p sort buffer)

    The forward term is not divided by tp: vLLM's own log reports the same activation peak at TP 1 and TP 2
    (1.26 GiB for Llama-3-8B on an H100, https://github.com/vllm-project/vllm/pull/10511, read 2026-12-06);
    at TP 1 the formula gives 0.78 + 0.49 = 1.27 GiB. At larger TP it overestimates, which errs towards fewer sequences.

Overhead per device (OVERHEAD_GIB):

    cuda_context  1.0 GiB  CUDA context, cuBLAS workspaces: vLLM's "non_torch_memory" was 0.15 GiB (vllm issue
                           15340), 0.16 (generative-computing/mellea PR 416), 0.33 (vllm issue 14452) and
                           1.79 GiB (vllm PR 10511, H100); 1.0 sits inside that range
    cuda_graphs   0.5 GiB  decode CUDA graphs: "Graph capturing finished ... took 0.13 GiB" (mellea PR 416, a 1 B
                           model), "Estimated CUDA graph memory: 0.36 GiB" (gpustack/runner PR 251); rounded up
    allocator     0.5 GiB  PyTorch caching-allocator fragmentation: assumed, not measured
    nccl          1.8 GiB  with tp > 1: NCCL and custom all-reduce buffers (non_torch_memory grew from 1.79 to
                           3.58 GiB going from TP 1 to TP 2 in PR 10511)
    CPUs: runtime 1.0 GiB (the Python process, libraries) and none of the GPU items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from advisor.llm.architecture import LlmArchitecture
from advisor.llm.precision import Precision, kv_dtype_bytes

GIB = float(1 << 30)
VLLM_BLOCK_TOKENS = 16          # vLLM's default KV block size on CUDA
DEFAULT_UTILISATION = 0.9       # vLLM --gpu-memory-utilization default
DEFAULT_MAX_NUM_SEQS = 256      # vLLM --max-num-seqs default
SAMPLER_FP32_COPIES = 4

OVERHEAD_GIB = {
    "gpu": {"cuda_context": 1.0, "cuda_graphs": 0.5, "allocator": 0.5},
    "cpu": {"runtime": 1.0},
}
NCCL_GIB = 1.8


@dataclass(frozen=True)
class MemoryFit:
    """One (model, precision, KV dtype, device memory, TP degree, context) memory plan; figures per device."""

    fits: bool
    reason: str | None              # why not, with the numbers; None when it fits
    tensor_parallel: int
    context: int
    device_memory_gib: float        # per GPU, or the instance's memory for a CPU
    usable_gib: float               # device memory x utilisation
    weights_gib: float              # per device
    activation_gib: float           # per device: forward pass of max_num_batched_tokens + sampler
    overhead_gib: float             # per device: the items of overhead_breakdown_gib
    kv_budget_gib: float            # per device: usable - weights - activation - overhead (may be negative)
    kv_gib_per_sequence: float      # per device at `context` tokens
    max_concurrent_sequences: int   # floor(kv_budget / kv per sequence); 0 when it does not fit
    overhead_breakdown_gib: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "fits": self.fits, "reason": self.reason, "tensor_parallel": self.tensor_parallel,
            "context": self.context, "device_memory_gib": round(self.device_memory_gib, 3),
            "usable_gib": round(self.usable_gib, 3), "weights_gib": round(self.weights_gib, 3),
            "activation_gib": round(self.activation_gib, 3), "overhead_gib": round(self.overhead_gib, 3),
            "overhead_breakdown_gib": dict(self.overhead_breakdown_gib),
            "kv_budget_gib": round(self.kv_budget_gib, 3), "kv_gib_per_sequence": round(self.kv_gib_per_sequence, 6),
            "max_concurrent_sequences": self.max_concurrent_sequences,
        }


def tensor_parallel_degrees(arch: LlmArchitecture, devices: int, *, group_size: int | None = None) -> list[int]:
    """The TP degrees vLLM accepts for `arch` on `devices` devices, smallest first.

    A degree must divide the device count (the planner uses whole instances), the attention heads (vLLM's
    ModelConfig.verify_with_parallel_config: "Total number of attention heads must be divisible by tensor
    parallel size"), and the MLP width (MergedColumnParallelLinear splits intermediate_size with divide(), which
    asserts). KV heads are split when tp <= kv_heads, else replicated, which needs tp to be a multiple of them
    (QKVParallelLinear: divide(total_num_kv_heads, tp) or divide(tp, total_num_kv_heads)). With a quantized
    checkpoint (group_size), each device's share of the rows of down_proj must be whole groups.
    """
    degrees = []
    for tp in range(1, devices + 1):
        if devices % tp or arch.num_attention_heads % tp or arch.intermediate_size % tp:
            continue
        if arch.num_kv_heads % tp and tp % arch.num_kv_heads:
            continue
        if group_size and (arch.intermediate_size // tp) % group_size:
            continue
        degrees.append(tp)
    return degrees


def _refusal(arch: LlmArchitecture, tp: int) -> str | None:
    heads, kv, inter = arch.num_attention_heads, arch.num_kv_heads, arch.intermediate_size
    if heads % tp:
        return f"tensor parallel {tp} does not divide the {heads} attention heads (vLLM requires it)"
    if inter % tp:
        return f"tensor parallel {tp} does not divide intermediate_size {inter} (vLLM requires it)"
    if kv % tp and tp % kv:
        return f"tensor parallel {tp} neither divides nor is a multiple of the {kv} KV heads (vLLM requires one)"
    return None


def activation_bytes(arch: LlmArchitecture, precision: Precision, max_num_batched_tokens: int,
                     max_num_seqs: int = DEFAULT_MAX_NUM_SEQS) -> float:
    """The profile run's activation peak (module docstring); not divided by tp."""
    h, experts = arch.hidden_size, arch.experts_per_token
    width = 2 * h + experts * 3 * arch.intermediate_size + (h * experts if arch.num_experts > 1 else 0)
    element = 4 if precision.compute_dtype == "fp32" else 2  # fp8 W8A8 keeps bf16 hidden states between layers
    forward = max_num_batched_tokens * element * width
    sampler = min(max_num_seqs, max_num_batched_tokens) * arch.vocab_size * 4 * SAMPLER_FP32_COPIES
    return float(forward + sampler)


def weight_bytes_per_device(arch: LlmArchitecture, precision: Precision, tp: int) -> float:
    """All weights / tp, plus the k/v projections a device holds beyond its share when tp > kv heads."""
    total = arch.weight_bytes(precision)
    kv_share = arch.kv_projection_params * precision.bits_per_weight / 8.0
    replicated = kv_share / min(tp, arch.num_kv_heads) - kv_share / tp
    return total / tp + replicated


def kv_bytes_per_sequence(arch: LlmArchitecture, kv_dtype: str, tp: int, context: int) -> float:
    """KV bytes one sequence of `context` tokens takes on one device (block-rounded, window-capped)."""
    kv_heads_per_device = max(1, arch.num_kv_heads // tp)
    cached = arch.kv_tokens_cached(math.ceil(context / VLLM_BLOCK_TOKENS) * VLLM_BLOCK_TOKENS)
    return 2.0 * arch.num_layers * kv_heads_per_device * arch.head_dim * kv_dtype_bytes(kv_dtype) * cached


def fit(arch: LlmArchitecture, precision: Precision, kv_dtype: str, device_memory_gib: float, tensor_parallel: int,
        context: int, *, utilisation: float = DEFAULT_UTILISATION, max_num_batched_tokens: int = 8192,
        kind: str = "gpu", max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, device_name: str | None = None) -> MemoryFit:
    """Plan the memory of one device of a `tensor_parallel` group serving sequences of `context` tokens.

    A TP degree vLLM would refuse, a context beyond the model's, weights beyond the usable memory or a KV budget
    too small for one sequence give fits=False with the reason and the numbers (the figures are still filled in).
    """
    if kind not in OVERHEAD_GIB:
        raise ValueError(f"kind {kind!r} must be 'gpu' or 'cpu'")
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation {utilisation} must be in (0, 1]")
    if tensor_parallel < 1 or context < 1 or max_num_batched_tokens < 1 or device_memory_gib <= 0:
        raise ValueError(f"tensor_parallel ({tensor_parallel}), context ({context}), max_num_batched_tokens "
                         f"({max_num_batched_tokens}) and device_memory_gib ({device_memory_gib}) must be positive")
    tp = tensor_parallel
    usable = device_memory_gib * utilisation
    overhead = dict(OVERHEAD_GIB[kind])
    if kind == "gpu" and tp > 1:
        overhead["nccl"] = NCCL_GIB
    overhead_gib = sum(overhead.values())
    weights = weight_bytes_per_device(arch, precision, tp) / GIB
    activation = activation_bytes(arch, precision, max_num_batched_tokens, max_num_seqs) / GIB
    budget = usable - weights - activation - overhead_gib
    per_sequence = kv_bytes_per_sequence(arch, kv_dtype, tp, context) / GIB
    sequences = math.floor(budget / per_sequence) if budget > 0 else 0

    name = device_name or ("GPU" if kind == "gpu" else "CPU instance")
    where = (f"{tp}x {name} {'have' if tp > 1 else 'has'} {usable:.1f} GiB usable{' each' if tp > 1 else ''} "
             f"({device_memory_gib:.1f} GiB x {utilisation:.2f})")
    if kind == "gpu":
        reason = _refusal(arch, tp)
    else:
        reason = None if tp == 1 else f"tensor parallel {tp} is planned for GPUs only; use 1"
    if reason is None and context > arch.max_context:
        reason = f"context {context} exceeds the model's max_position_embeddings {arch.max_context}"
    if reason is None and weights >= usable:
        per_device = f" ({weights:.1f} GiB per device)" if tp > 1 else ""
        reason = f"needs {weights * tp:.1f} GiB of weights in {precision.name}{per_device}; {where}"
    if reason is None and budget <= 0:
        reason = (f"weights {weights:.1f} + activations {activation:.1f} + overhead {overhead_gib:.1f} GiB per device "
                  f"leave no room for the KV cache; {where}")
    if reason is None and sequences < 1:
        reason = (f"the KV cache budget of {budget:.2f} GiB per device holds no sequence of {context} tokens "
                  f"({per_sequence:.2f} GiB each in {kv_dtype})")
    return MemoryFit(fits=reason is None, reason=reason, tensor_parallel=tp, context=context,
                     device_memory_gib=device_memory_gib, usable_gib=usable, weights_gib=weights,
                     activation_gib=activation, overhead_gib=overhead_gib, kv_budget_gib=budget,
                     kv_gib_per_sequence=per_sequence, max_concurrent_sequences=sequences if reason is None else 0,
                     overhead_breakdown_gib=overhead)


def fit_map(arch: LlmArchitecture, precision: Precision, kv_dtype: str, device_memory_gib: float,
            tensor_parallel: int, contexts, **options) -> dict[int, int]:
    """Max concurrent sequences at each context length (0 where it does not fit); options as for fit()."""
    return {context: fit(arch, precision, kv_dtype, device_memory_gib, tensor_parallel, context,
                         **options).max_concurrent_sequences for context in contexts}
