"""What the planner recommends for a generative model, in the terms vLLM takes: one engine replica of
`tensor_parallel` GPUs on an instance, its engine settings, and what it was predicted to do under the modelled
workload. `serving_artifact` turns it into files; `verify_llm` checks those files still say the same thing.

`problems()` lists what would make the deployment fail to start or not be the one that was modelled. The GPU rules:

- fp8 (W8A8) runs on FP8 tensor cores, compute capability >= 8.9 (Ada, Hopper, Blackwell). vLLM also *loads* fp8
  checkpoints on Turing/Ampere, but as weight-only W8A16 through its FP8 Marlin kernel, a different speed from the
  one modelled, so fp8 on an A100 is a problem. Source: vLLM docs, features/quantization/fp8 ("FP8 computation is
  supported on NVIDIA GPUs with compute capability >= 8.9 ... FP8 models will run on compute capability >= 7.5
  (Turing) as weight-only W8A16, utilizing FP8 Marlin"), https://docs.vllm.ai/en/stable/features/quantization/fp8/
  (read 2026-12-06).
- bf16 needs compute capability >= 8.0 (no bf16 on T4 or V100). Source: NVIDIA Transformer Engine support matrix
  ("BF16 requires compute capability 8.0 or higher"), https://nvidia.github.io/TransformerEngine/support_matrix.html
  (read 2026-12-06).
- Without chunked prefill vLLM refuses max_num_batched_tokens < max_model_len (a whole prompt must fit one step);
  with it, a step still holds at least one token per running sequence, so max_num_batched_tokens >= max_num_seqs.
- Tensor parallelism splits attention heads and NCCL rings evenly: a power of two, dividing the instance's GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

PRECISIONS = ("bf16", "fp16", "fp8", "int8-wo", "int4-wo")
DTYPES = ("bfloat16", "float16", "auto")
KV_CACHE_DTYPES = ("auto", "fp8")
PERCENTILES = ("p50", "p90", "p95", "p99")
ARRIVALS = ("poisson", "constant")

# Compute capability of the GPU types the catalogue names (hwprofiles/catalog/*.yaml), plus B200. Sources: NVIDIA,
# https://developer.nvidia.com/cuda-gpus, and the Transformer Engine support matrix above (both read 2026-12-06):
# Volta 7.0, Turing 7.5, Ampere 8.0 (A100) / 8.6 (A10G), Ada 8.9, Hopper 9.0, Blackwell data centre 10.0.
GPU_COMPUTE_CAPABILITY = {"V100": 7.0, "T4": 7.5, "A100": 8.0, "A10G": 8.6, "L4": 8.9, "L40S": 8.9, "H100": 9.0,
                          "H200": 9.0, "B200": 10.0}
FP8_MIN_CAPABILITY = 8.9
BF16_MIN_CAPABILITY = 8.0

# weight-only precisions ride on a quantized checkpoint; these are the vLLM --quantization methods that load one
_WEIGHT_ONLY_METHODS = {"int8-wo": {"compressed-tensors", "gptq", "gptq_marlin", "experts_int8", None},
                        "int4-wo": {"awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", None}}
_FP8_METHODS = {"fp8", "fbgemm_fp8", "modelopt", "compressed-tensors", None}  # None: an fp8 checkpoint says so itself


class DeploymentError(ValueError):
    """A deployment record that cannot be read or written; the message is one line."""


@dataclass(frozen=True)
class LlmDeployment:
    """One vLLM engine replica and the prediction it was chosen on.

    `workload` is the modelled load of this replica: {"prompt_tokens", "output_tokens", "rate_rps", "arrival", ...}
    with token counts as numbers or as distributions carrying a mean. `slo` is {"ttft_ms", "itl_ms", "percentile"}.
    `predicted` holds figures at the SLO percentile, each with an interval: either {"ttft_ms": 412.0,
    "ttft_ms_interval": [380.0, 470.0], ...} or {"ttft_ms": {"value": 412.0, "interval": [380.0, 470.0]}}, plus
    "source" (what the figures rest on). Latencies are those of one replica at workload["rate_rps"];
    "goodput_rps" is the whole instance's, its `replicas_per_instance` replicas together (as advisor.llm.plan's
    rows)."""

    model: str  # the Hugging Face folder or hub id the user gave (what `vllm serve` loads)
    served_model_name: str
    instance: str
    provider: str
    gpu_model: str
    gpus: int  # GPUs on the instance
    tensor_parallel: int
    precision: str  # bf16 | fp16 | fp8 | int8-wo | int4-wo
    vllm_quantization: str | None  # vLLM --quantization (None: the checkpoint's dtype)
    dtype: str  # vLLM --dtype: bfloat16 | float16 | auto
    kv_cache_dtype: str  # vLLM --kv-cache-dtype: auto | fp8
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    enable_chunked_prefill: bool
    workload: dict
    slo: dict
    predicted: dict
    # a full release, so the image tag vllm/vllm-openai:v<engine_version> exists (there is no v0.11 tag, only
    # v0.11.0, v0.11.1, ...: https://hub.docker.com/r/vllm/vllm-openai/tags, read 2026-12-06)
    engine_version: str = "0.11.0"

    @property
    def replicas_per_instance(self) -> int:
        """Engine replicas of `tensor_parallel` GPUs that one instance holds."""
        return max(1, self.gpus // self.tensor_parallel) if self.tensor_parallel > 0 else 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LlmDeployment:
        """Parse a deployment record (deployment.json, the manifest's copy) with a strict schema: no unknown or
        missing fields, no strings for numbers. Raises DeploymentError naming the first bad field."""
        try:
            return cls(**dict(_schema().model_validate(data)))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(the record)"
            raise DeploymentError(f"deployment field {field}: {first['msg']}") from None

    def problems(self) -> list[str]:
        """Everything inconsistent about this deployment, one sentence each; empty when it can be deployed."""
        found = []
        tp, gpus = self.tensor_parallel, self.gpus
        if not self.model.strip():
            found.append("model is empty")
        if not self.served_model_name.strip():
            found.append("served_model_name is empty")
        if gpus < 1:
            found.append(f"gpus is {gpus}; an instance has at least one GPU")
        if tp < 1 or tp & (tp - 1):
            found.append(f"tensor_parallel {tp} is not a power of two")
        elif gpus >= 1 and gpus % tp:
            found.append(f"tensor_parallel {tp} does not divide the instance's {gpus} GPUs")
        if not 0 < self.gpu_memory_utilization <= 1:
            found.append(f"gpu_memory_utilization {self.gpu_memory_utilization:g} is outside (0, 1]")
        for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                found.append(f"{name} is {getattr(self, name)}; it must be at least 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            found.append(f"max_num_batched_tokens {self.max_num_batched_tokens} < max_num_seqs {self.max_num_seqs}: "
                         "a step could not give every running sequence its token")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            found.append(f"without chunked prefill max_num_batched_tokens {self.max_num_batched_tokens} must be at "
                         f"least max_model_len {self.max_model_len} (vLLM refuses to start)")
        found += self._precision_problems()
        found += self._workload_problems()
        if not re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", self.engine_version):
            found.append(f"engine_version {self.engine_version!r} is not a vLLM release like 0.11.0")
        return found

    def _precision_problems(self) -> list[str]:
        found = []
        if self.precision not in PRECISIONS:
            return [f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}"]
        if self.dtype not in DTYPES:
            found.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            found.append(f"kv_cache_dtype {self.kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
        quantization = self.vllm_quantization
        if self.precision in ("bf16", "fp16") and quantization is not None:
            found.append(f"precision {self.precision} runs the checkpoint unquantized, but vllm_quantization is "
                         f"{quantization!r}")
        if (self.precision, self.dtype) in (("bf16", "float16"), ("fp16", "bfloat16")):
            found.append(f"precision {self.precision} with dtype {self.dtype}")
        if self.precision == "fp8" and quantization not in _FP8_METHODS:
            found.append(f"precision fp8 with vllm_quantization {quantization!r}")
        if self.precision in _WEIGHT_ONLY_METHODS and quantization not in _WEIGHT_ONLY_METHODS[self.precision]:
            found.append(f"precision {self.precision} with vllm_quantization {quantization!r}")
        capability = GPU_COMPUTE_CAPABILITY.get(self.gpu_model)
        needs_bf16 = self.precision == "bf16" or self.dtype == "bfloat16"
        if self.precision == "fp8":
            if capability is None:
                found.append(f"fp8 needs FP8 tensor cores (compute capability >= {FP8_MIN_CAPABILITY}); the compute "
                             f"capability of {self.gpu_model} is not known")
            elif capability < FP8_MIN_CAPABILITY:
                found.append(f"fp8 needs FP8 tensor cores (compute capability >= {FP8_MIN_CAPABILITY}); "
                             f"{self.gpu_model} has {capability} (vLLM would fall back to weight-only FP8 Marlin, "
                             "not what was modelled)")
        if needs_bf16 and capability is not None and capability < BF16_MIN_CAPABILITY:
            found.append(f"bf16 needs compute capability >= {BF16_MIN_CAPABILITY}; {self.gpu_model} has {capability}")
        return found

    def _workload_problems(self) -> list[str]:
        found = []
        prompt = mean_tokens(self.workload.get("prompt_tokens"))
        output = mean_tokens(self.workload.get("output_tokens"))
        if prompt is None or prompt < 1:
            found.append("workload.prompt_tokens is missing or not a positive token count")
        if output is None or output < 1:
            found.append("workload.output_tokens is missing or not a positive token count")
        if prompt and output and prompt + output > self.max_model_len:
            found.append(f"the modelled request ({prompt} prompt + {output} output tokens) exceeds max_model_len "
                         f"{self.max_model_len}")
        rate = self.workload.get("rate_rps")
        if not _is_number(rate) or rate <= 0:
            found.append("workload.rate_rps is missing or not a positive rate")
        if self.workload.get("arrival", "poisson") not in ARRIVALS:
            found.append(f"workload.arrival {self.workload.get('arrival')!r} is not one of {', '.join(ARRIVALS)}")
        if self.slo.get("percentile") not in PERCENTILES:
            found.append(f"slo.percentile {self.slo.get('percentile')!r} is not one of {', '.join(PERCENTILES)}")
        targets = [self.slo.get(key) for key in ("ttft_ms", "itl_ms")]
        if all(value is None for value in targets) or any(v is not None and (not _is_number(v) or v <= 0)
                                                          for v in targets):
            found.append("slo needs ttft_ms and/or itl_ms, each a positive number of milliseconds")
        return found


def _schema() -> type[BaseModel]:
    """The strict schema of a deployment record, made from the dataclass's own fields so the two cannot drift."""
    global _SCHEMA
    if _SCHEMA is None:
        hints = get_type_hints(LlmDeployment)
        fields = {f.name: (hints[f.name], f.default if f.default is not dataclasses.MISSING else ...)
                  for f in dataclasses.fields(LlmDeployment)}
        _SCHEMA = create_model("LlmDeploymentRecord", __config__=ConfigDict(extra="forbid", strict=True), **fields)
    return _SCHEMA


_SCHEMA: type[BaseModel] | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def mean_tokens(value: Any) -> int | None:
    """A token count from a workload field: a number, or a distribution's mean ({"mean": ...}, {"value": ...}, or
    histogram {"bins": [...], "weights": [...]}); None when there is none. Rounded to whole tokens."""
    if _is_number(value):
        return round(value)
    if isinstance(value, dict):
        for key in ("mean", "value", "tokens"):
            if _is_number(value.get(key)):
                return round(value[key])
        bins, weights = value.get("bins"), value.get("weights")
        if (isinstance(bins, list) and isinstance(weights, list) and len(bins) == len(weights) and bins
                and all(_is_number(b) for b in bins) and all(_is_number(w) and w >= 0 for w in weights)
                and sum(weights) > 0):
            return round(sum(b * w for b, w in zip(bins, weights)) / sum(weights))
    return None
