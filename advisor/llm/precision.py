"""Precision variants an LLM can be served in, what they cost in weight memory, and where they run.

Weight bytes of a variant, for P quantized parameters (the decoder layers' linear matrices) and U others
(embeddings, lm_head, norms, biases, router: AWQ/GPTQ/fp8 checkpoints keep them in 16 bits):

    bytes = P * (weight_bits + group_overhead_bits / group_size) / 8 + U * unquantized_bytes

    int4-wo (AWQ/GPTQ, group 128): per group of 128 weights one fp16 scale (16 bits) and one packed 4-bit zero
             point (AWQ's qzeros, GPTQ's qzeros), so 4 + 20/128 = 4.15625 bits per weight
    int8-wo (GPTQ 8-bit, group 128): 8 + (16 + 8)/128 = 8.1875 bits per weight
    fp8 (W8A8): 8 bits; per-tensor or per-channel scales are < 0.01 % and left out
    bf16 / fp16: 16 bits; fp32 (CPU only): 32 bits, and its unquantized parts are 32-bit too

Where each runs (the rules in `unsupported_reason`):
    bf16 needs compute capability >= 8.0 (Ampere's bf16 tensor cores; T4 is 7.5: fp16 only).
    fp8 W8A8 needs fp8 tensor cores: compute capability >= 8.9 (L4, L40S, H100, H200; never T4, A10G, A100).
        vLLM's table: FP8 (W8A8) on Ada and Hopper only.
    AWQ needs >= 7.5 and GPTQ >= 7.0 in vLLM (both also on x86 CPUs); vLLM picks its Marlin kernels on >= 8.0.
    CPUs: fp32 everywhere; bf16 where the ISA has avx512_bf16 or AMX (amx_bf16); int8/int4 weight-only anywhere.
    KV cache: fp16/bf16 (2 bytes) follow the activations; fp8 (1 byte, vLLM --kv-cache-dtype fp8, SGLang
        fp8_e4m3, TensorRT-LLM FP8 KV) only on compute capability >= 8.9, where the GPU converts fp8 natively and
        the engines' fused attention kernels (FlashAttention 3 on Hopper, FlashInfer, TensorRT-LLM's XQA) read it.
        On Ampere vLLM's default FlashAttention 2 backend has no fp8 KV path, so the planner does not offer it.

Sources (read 2026-12-06):
    https://developer.nvidia.com/cuda-gpus (compute capabilities)
    https://docs.vllm.ai/en/v0.9.2/features/quantization/supported_hardware.html (quantization x hardware)
    https://docs.vllm.ai/en/v0.11.2/features/quantization/quantized_kvcache/ (fp8 KV cache)
    AutoAWQ / AutoGPTQ checkpoint layout (qweight, qzeros packed in int32, fp16 scales per group)
"""

from __future__ import annotations

from dataclasses import dataclass

from advisor.errors import UserError


class PrecisionError(UserError, ValueError):
    """An unknown precision, KV dtype or device; the message is one line."""


# Compute capability of the GPUs the catalogue carries (NVIDIA, https://developer.nvidia.com/cuda-gpus, read
# 2026-12-06). The catalogue's own gpu.compute_capability wins where it has one.
GPU_COMPUTE_CAPABILITY: dict[str, float] = {
    "T4": 7.5,
    "A10G": 8.6,
    "A10": 8.6,
    "A100": 8.0,
    "L4": 8.9,
    "L40S": 8.9,
    "H100": 9.0,
    "H200": 9.0,
}

FP8_MIN_CAPABILITY = 8.9
BF16_MIN_CAPABILITY = 8.0

# KV cache dtype -> bytes per element. fp32 is for CPUs serving an fp32 model (the cache follows the activations).
KV_DTYPES: dict[str, int] = {"fp16": 2, "bf16": 2, "fp8": 1, "fp32": 4}

# vLLM's --kv-cache-dtype for each (auto = the model's activation dtype)
KV_VLLM_FLAG: dict[str, str] = {"fp16": "auto", "bf16": "auto", "fp8": "fp8", "fp32": "auto"}

_BF16_ISA = ("avx512_bf16", "amx_bf16")
_X86_ISA = ("avx2", "avx512f")  # vLLM's quantized CPU kernels (AWQ, GPTQ) are x86 only


def kv_dtype_bytes(kv_dtype: str) -> int:
    try:
        return KV_DTYPES[kv_dtype]
    except KeyError:
        raise PrecisionError(f"unknown KV cache dtype {kv_dtype!r}; expected one of {', '.join(KV_DTYPES)}") from None


@dataclass(frozen=True)
class DeviceCaps:
    """What the precision rules need to know about a device; built by the planner from the catalogue."""

    kind: str                          # "gpu" | "cpu"
    model: str                         # "H100", "A10G", ... or the CPU microarchitecture
    compute_capability: float | None   # GPUs; None: looked up in GPU_COMPUTE_CAPABILITY
    isa: tuple[str, ...] = ()          # CPUs: the catalogue's isa list

    def __post_init__(self):
        if self.kind not in ("gpu", "cpu"):
            raise PrecisionError(f"device kind {self.kind!r} must be 'gpu' or 'cpu'")

    @property
    def capability(self) -> float | None:
        """The compute capability: the catalogue's, else NVIDIA's table, else None (unknown GPU)."""
        if self.compute_capability is not None:
            return self.compute_capability
        return GPU_COMPUTE_CAPABILITY.get(self.model)


@dataclass(frozen=True)
class Precision:
    """One way to store and run the weights. Formulas and rules: the module docstring."""

    name: str                          # bf16 | fp16 | fp8 | int8-wo | int4-wo | fp32
    weight_bits: float                 # bits per quantized weight, before group overhead
    group_size: int | None             # weights sharing one scale (None: per tensor/channel, overhead negligible)
    compute_dtype: str                 # the dtype the matmuls run in: which catalogue peak applies
    engines: tuple[str, ...]           # GPU serving engines that load this variant
    vllm_quantization: str | None      # vLLM --quantization (None: the checkpoint's own dtype)
    vllm_dtype: str = "auto"           # vLLM --dtype
    group_overhead_bits: int = 0       # bits of scale + zero point stored per group
    min_capability: float | None = None  # GPUs: lowest compute capability that serves it; None: not on GPUs
    cpu_engines: tuple[str, ...] = ()  # CPU engines; () = not offered on CPUs
    cpu_isa: tuple[str, ...] = ()      # CPUs: one of these ISA flags is needed (() = any CPU)
    note: str = ""

    @property
    def bits_per_weight(self) -> float:
        overhead = self.group_overhead_bits / self.group_size if self.group_size else 0.0
        return self.weight_bits + overhead

    @property
    def unquantized_bytes_per_param(self) -> int:
        """Embeddings, lm_head, norms: 16-bit in every checkpoint but an fp32 one."""
        return 4 if self.weight_bits >= 32 else 2

    def weight_bytes(self, params: int, unquantized_params: int = 0) -> float:
        """Bytes of `params` weights stored at this precision plus `unquantized_params` kept at 16 (fp32: 32) bits."""
        return params * self.bits_per_weight / 8.0 + unquantized_params * self.unquantized_bytes_per_param

    def engines_for(self, device: DeviceCaps) -> tuple[str, ...]:
        """The engines that serve this variant on `device` (vLLM's AWQ/GPTQ CPU kernels are x86 only)."""
        if device.kind == "gpu":
            return self.engines
        if self.weight_bits < 16 and not set(_X86_ISA) & set(device.isa):
            return tuple(engine for engine in self.cpu_engines if engine != "vllm")
        return self.cpu_engines

    def unsupported_reason(self, device: DeviceCaps) -> str | None:
        """None when `device` can serve this variant; else one line saying why not."""
        if device.kind == "cpu":
            if not self.cpu_engines:
                return f"{self.name} is not offered on CPUs (no {self.compute_dtype} matrix units on {device.model})"
            if self.cpu_isa and not set(self.cpu_isa) & set(device.isa):
                return (f"{self.name} on a CPU needs {' or '.join(self.cpu_isa)}; {device.model} has "
                        f"{', '.join(device.isa) or 'no listed ISA extensions'}")
            return None
        if self.min_capability is None:
            return f"{self.name} is offered on CPUs only (a GPU serves bf16/fp16 at less memory and more speed)"
        capability = device.capability
        if capability is None:
            return (f"compute capability of GPU {device.model} is unknown; add gpu.compute_capability to its "
                    f"catalogue entry")
        if capability < self.min_capability:
            return (f"{self.name} needs compute capability >= {self.min_capability:.1f}; {device.model} is "
                    f"{capability:.1f}{self.note and ' (' + self.note + ')'}")
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "weight_bits": self.weight_bits, "group_size": self.group_size,
                "bits_per_weight": self.bits_per_weight, "compute_dtype": self.compute_dtype,
                "engines": list(self.engines), "cpu_engines": list(self.cpu_engines),
                "vllm_quantization": self.vllm_quantization, "vllm_dtype": self.vllm_dtype}


_GPU_ENGINES = ("vllm", "sglang", "tensorrt-llm")

PRECISIONS: tuple[Precision, ...] = (
    Precision("bf16", 16, None, "bf16", _GPU_ENGINES, None, vllm_dtype="bfloat16",
              min_capability=BF16_MIN_CAPABILITY, cpu_engines=("vllm",), cpu_isa=_BF16_ISA,
              note="no bf16 tensor cores before Ampere: use fp16"),
    Precision("fp16", 16, None, "fp16", _GPU_ENGINES, None, vllm_dtype="float16", min_capability=7.0),
    Precision("fp8", 8, None, "fp8", _GPU_ENGINES, "fp8", vllm_dtype="auto", min_capability=FP8_MIN_CAPABILITY,
              note="fp8 tensor cores arrived with Ada/Hopper"),
    # GPTQ 8-bit checkpoints, served through vLLM's gptq / gptq_marlin kernels (GPTQ: Volta and later)
    Precision("int8-wo", 8, 128, "fp16", _GPU_ENGINES, "gptq", vllm_dtype="float16", group_overhead_bits=16 + 8,
              min_capability=7.0, cpu_engines=("vllm",), cpu_isa=_X86_ISA),
    # AWQ (vLLM: Turing and later; awq_marlin on Ampere+); GPTQ 4-bit checkpoints size the same
    Precision("int4-wo", 4, 128, "fp16", _GPU_ENGINES, "awq", vllm_dtype="float16", group_overhead_bits=16 + 4,
              min_capability=7.5, cpu_engines=("onnxruntime-genai", "vllm")),
    Precision("fp32", 32, None, "fp32", (), None, vllm_dtype="float32", cpu_engines=("onnxruntime-genai", "vllm")),
)


def precision_named(name: str) -> Precision:
    for precision in PRECISIONS:
        if precision.name == name:
            return precision
    raise PrecisionError(f"unknown precision {name!r}; expected one of {', '.join(p.name for p in PRECISIONS)}")


def kv_unsupported_reason(kv_dtype: str, device: DeviceCaps) -> str | None:
    """None when the engines can keep the KV cache in `kv_dtype` on `device`; else one line saying why not."""
    kv_dtype_bytes(kv_dtype)  # unknown names raise
    if device.kind == "cpu":
        if kv_dtype in ("fp8", "fp16"):
            return f"an {kv_dtype} KV cache is not offered on CPUs (bf16 where the ISA has it, else fp32)"
        if kv_dtype == "bf16" and not set(_BF16_ISA) & set(device.isa):
            return f"a bf16 KV cache on a CPU needs {' or '.join(_BF16_ISA)}; {device.model} has neither"
        return None
    if kv_dtype == "fp32":
        return "an fp32 KV cache is for CPUs; GPUs keep it in the activations' 16-bit dtype or fp8"
    capability = device.capability
    if capability is None:
        return f"compute capability of GPU {device.model} is unknown; add gpu.compute_capability to its catalogue entry"
    if kv_dtype == "fp8" and capability < FP8_MIN_CAPABILITY:
        return (f"an fp8 KV cache needs compute capability >= {FP8_MIN_CAPABILITY:.1f} (vLLM, SGLang and TensorRT-LLM "
                f"read it natively on L4, L40S, H100, H200); {device.model} is {capability:.1f}")
    if kv_dtype == "bf16" and capability < BF16_MIN_CAPABILITY:
        return (f"a bf16 KV cache needs compute capability >= {BF16_MIN_CAPABILITY:.1f}; {device.model} is "
                f"{capability:.1f}")
    return None
