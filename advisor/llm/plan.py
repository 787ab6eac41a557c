"""The LLM planner: every catalogue instance x precision x KV-cache dtype x tensor-parallel degree x engine
setting, each checked for memory fit, simulated under the workload at the highest load that still meets the
SLOs, and ranked by cost per million output tokens.

For one candidate (an instance serving `gpus // tensor_parallel` engine replicas):
- memory: advisor.llm.memory.fit gives the concurrent sequences the KV budget holds at `--context`;
- speed: advisor.llm.perf.StepModel (a roofline per phase with efficiency factors: fitted from measurements of that
  device where the priors hold some, else a stated prior) and advisor.llm.simulate (continuous batching with
  chunked prefill) give TTFT, inter-token and end-to-end percentiles at an arrival rate;
- load: the highest per-replica arrival rate whose simulated percentiles meet every SLO at the pessimistic end of
  the efficiency band (max_rate_meeting); the instance serves `replicas x` that rate;
- cost: price per hour / (output tokens per hour at that rate) per million output tokens (and per million prompt +
  output tokens); instances needed for --qps and their monthly cost (730 h).

Identical devices (the same GPU model, count and interconnect on several clouds) are simulated once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from advisor.llm.architecture import LlmArchitecture
from advisor.llm.memory import MemoryFit, fit, tensor_parallel_degrees
from advisor.llm.calibration import efficiency_for, load_measurements
from advisor.llm.perf import Device, Efficiency, StepModel, model_work
from advisor.llm.precision import PRECISIONS, DeviceCaps, GPU_COMPUTE_CAPABILITY, Precision, \
    kv_unsupported_reason
from advisor.llm.simulate import EngineConfig, SimResult, Slos, capacity_rps, max_rate_meeting
from advisor.llm.workload import Workload
from hwprofiles.catalog import Catalog, Instance

HOURS_PER_MONTH = 730.0
GPU_MEMORY_UTILISATION = 0.9  # vLLM's default --gpu-memory-utilization
ENGINE_SETTINGS = ((64, 2048), (256, 8192))  # (max_num_seqs, max_num_batched_tokens) tried per candidate
GPU_ENGINE = "vllm"  # what GPU rows are planned for and their artifact launches
SIMULATED_PER_INSTANCE = 4  # candidates simulated per instance, by ascending cost bound


@dataclass(frozen=True)
class LlmSlo:
    ttft_ms: float | None
    itl_ms: float | None
    percentile: str = "p99"

    def to_dict(self) -> dict:
        return {"ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms, "percentile": self.percentile}

    def for_simulation(self) -> Slos:
        """The simulator judges its percentiles at the pessimistic end of their intervals (efficiency band
        included)."""
        return Slos(ttft_ms=self.ttft_ms, itl_ms=self.itl_ms, e2e_ms=None, percentile=self.percentile)


@dataclass(frozen=True)
class PlanRequest:
    arch: LlmArchitecture
    workload: Workload
    slo: LlmSlo
    context: int  # --context: the max model length served (KV per sequence is sized for it)
    catalog: Catalog
    qps: float | None = None
    gpu_memory_utilisation: float = GPU_MEMORY_UTILISATION
    # LlmMeasurement records the efficiency factors are fitted from (advisor.llm.calibration); empty: the stored
    # ones (hwprofiles/measurements/llm), loaded once per plan. load_measurements(paths) adds a user's to those.
    measurements: tuple = ()


@dataclass(frozen=True)
class LlmRow:
    instance: str
    provider: str
    region: str
    price_per_hour: float
    device: str  # GPU model, or the CPU microarchitecture
    devices: int  # GPUs on the instance (1 for a CPU instance)
    tensor_parallel: int
    replicas: int  # engine replicas on the instance: devices // tensor_parallel
    precision: str
    kv_cache_dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    max_concurrent_sequences: int  # what the KV budget holds at `context`
    rate_rps: float  # per replica: the highest arrival rate meeting the SLOs
    ttft_ms: float  # at the SLO percentile, at rate_rps
    ttft_ms_interval: tuple[float, float]
    itl_ms: float
    itl_ms_interval: tuple[float, float]
    e2e_ms: float
    goodput_rps: float  # per instance: requests per second meeting every SLO
    output_tokens_per_s: float  # per instance
    cost_per_million_output_tokens: float
    cost_per_million_tokens: float
    instances_needed: int | None
    monthly_cost: float | None
    meets_slo: bool
    source: str  # fitted | roofline
    efficiency_source: str
    memory: dict
    notes: tuple[str, ...] = ()
    pareto_tokens_per_s_per_user: float = 0.0  # 1000 / itl_ms: the decode speed one user sees
    engine: str = GPU_ENGINE  # the serving engine the row is planned for (its efficiency factors are that engine's)

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["ttft_ms_interval"] = list(self.ttft_ms_interval)
        data["itl_ms_interval"] = list(self.itl_ms_interval)
        data["notes"] = list(self.notes)
        data["gpus"] = self.devices
        return data


@dataclass
class Plan:
    rows: list[LlmRow]  # every candidate that fits and has a rate > 0, best (cheapest meeting the SLOs) first
    excluded: list[dict] = field(default_factory=list)  # {"instance", "reason"}: nothing fitted or met
    recommendation: LlmRow | None = None
    # when nothing fits anywhere: the candidate that came closest in memory (need / usable per device, smallest)
    closest_memory_miss: dict | None = None
    closest_miss: LlmRow | None = None
    pareto: list[str] = field(default_factory=list)


def device_caps(instance: Instance) -> DeviceCaps:
    if instance.gpu is not None:
        capability = instance.gpu.compute_capability or GPU_COMPUTE_CAPABILITY.get(instance.gpu.model)
        return DeviceCaps("gpu", instance.gpu.model, capability)
    return DeviceCaps("cpu", instance.cpu.microarchitecture, None, tuple(instance.cpu.isa))


def _device(instance: Instance, precision: Precision, tensor_parallel: int) -> Device | None:
    """The per-device figures the roofline needs, or None when the catalogue lacks them."""
    if instance.gpu is None:
        dtype_gflops = instance.peak.fp16_gflops if precision.compute_dtype in ("bf16", "fp16") else \
            instance.peak.fp32_gflops
        return Device(instance.cpu.microarchitecture, 1, dtype_gflops / 1000.0, instance.peak.bandwidth_gbs, None,
                      None)
    gpu = instance.gpu
    peak = gpu.peak_tflops(precision.compute_dtype)
    if not peak or not gpu.memory_bandwidth_gbs:
        return None
    link = gpu.interconnect if tensor_parallel > 1 else None
    return Device(gpu.model, tensor_parallel, peak, gpu.memory_bandwidth_gbs, link.bandwidth_gbs if link else None,
                  link.kind if link else None)


def kv_choices(precision: Precision) -> list[str]:
    """The KV cache in the dtype of the activations, or in fp8 (where the device supports it)."""
    native = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(precision.compute_dtype, "bf16")
    return [native] if native == "fp32" else [native, "fp8"]


def _memory_gib(instance: Instance) -> float:
    return instance.gpu.memory_gib if instance.gpu is not None else instance.memory_gib


def _devices(instance: Instance) -> int:
    return instance.gpu.count if instance.gpu is not None else 1


@dataclass(frozen=True)
class _Candidate:
    precision: Precision
    kv_dtype: str
    tensor_parallel: int
    memory: MemoryFit
    engine: EngineConfig
    serving_engine: str = GPU_ENGINE  # the engine that serves it: vllm on GPUs, onnxruntime-genai for CPU fp32/int4


class Planner:
    def __init__(self, request: PlanRequest):
        self.request = request
        self._simulated: dict[tuple, tuple[float, SimResult, str] | None] = {}
        self._memory_misses: list[dict] = []
        self._anything_fitted = False
        self._measurements = tuple(request.measurements) or tuple(load_measurements())
        self._efficiency: dict[tuple[str, str], Efficiency] = {}  # per device and engine, once per plan

    def plan(self) -> Plan:
        rows: list[LlmRow] = []
        excluded: list[dict] = []
        for instance in self.request.catalog.instances:
            best, reason = self._instance(instance)
            if best:
                rows += best
            else:
                excluded.append({"instance": instance.name, "reason": reason})
        meeting = sorted((r for r in rows if r.meets_slo), key=lambda r: r.cost_per_million_output_tokens)
        # a memory miss is the closest only when nothing fitted at all (else the misses were on speed)
        closest = None if meeting or self._anything_fitted else min(
            self._memory_misses, key=lambda m: m["need_over_usable"], default=None)
        return Plan(rows=meeting, excluded=excluded, recommendation=meeting[0] if meeting else None,
                    pareto=pareto_frontier(meeting), closest_memory_miss=closest)

    def _instance(self, instance: Instance) -> tuple[list[LlmRow], str | None]:
        """The instance's cheapest candidate meeting the SLOs (one row), or why it has none.

        Candidates are simulated cheapest-bound first: a candidate's cost can be no lower than at 1.5x its
        analytic capacity (the top of the simulator's rate bracket), so once that bound is above the best cost
        found on the instance the rest cannot win and are skipped, and at most SIMULATED_PER_INSTANCE are
        simulated (the search is a heuristic there: a candidate ranked lower by its capacity bound may have met the
        SLOs at a higher rate). One that misses the SLOs unloaded (its prefill or a lone decode step, at the
        pessimistic end of the efficiency band) is never simulated."""
        caps = device_caps(instance)
        reasons: list[str] = []
        scored = []
        for candidate in self._candidates(instance, caps, reasons):
            device = _device(instance, candidate.precision, candidate.tensor_parallel)
            if device is None:
                reasons.append(f"the catalogue has no {candidate.precision.compute_dtype} peak or memory bandwidth "
                               f"for {instance.gpu.model if instance.gpu else instance.name}")
                continue
            step = self._step(device, candidate)
            why = self._misses_unloaded(step, candidate)
            if why:
                reasons.append(why)
                continue
            bound = _cost_per_million(instance, candidate, 1.5 * capacity_rps(step, self.request.workload,
                                                                                candidate.engine),
                                      self.request.workload)
            scored.append((bound, len(scored), candidate, device, step))
        best: LlmRow | None = None
        for rank_, (bound, _, candidate, device, step) in enumerate(sorted(scored, key=lambda item: item[:2])):
            if rank_ >= SIMULATED_PER_INSTANCE or (best is not None and bound >= best.cost_per_million_output_tokens):
                break
            row = self._row(instance, candidate, device, step, reasons)
            if row is not None and (best is None or row.cost_per_million_output_tokens
                                    < best.cost_per_million_output_tokens):
                best = row
        if best is None:
            return [], _summarise(reasons)
        return [best], None

    def _memory_miss(self, instance: Instance, precision: Precision, kv_dtype: str, memory: MemoryFit) -> None:
        """A candidate that does not fit, with how far: what one sequence at the context needs per device against
        what the device can use."""
        need = memory.weights_gib + memory.activation_gib + memory.overhead_gib + memory.kv_gib_per_sequence
        self._memory_misses.append({
            "instance": instance.name, "precision": precision.name, "kv_cache_dtype": kv_dtype,
            "tensor_parallel": memory.tensor_parallel, "needed_gib_per_device": round(need, 2),
            "usable_gib_per_device": round(memory.usable_gib, 2),
            "need_over_usable": round(need / memory.usable_gib, 3) if memory.usable_gib > 0 else float("inf"),
            "reason": memory.reason})

    def _step(self, device: Device, candidate: _Candidate) -> StepModel:
        key = (device.name, candidate.serving_engine)
        if key not in self._efficiency:
            self._efficiency[key] = efficiency_for(device.name, candidate.serving_engine, self._measurements)
        efficiency = self._efficiency[key]
        return StepModel(model_work(self.request.arch, candidate.precision, candidate.kv_dtype), device, efficiency)

    def _misses_unloaded(self, step: StepModel, candidate: _Candidate) -> str | None:
        slo, workload = self.request.slo, self.request.workload
        high = step.efficiency.relative_interval[1]
        label = f"{candidate.precision.name} TP {candidate.tensor_parallel}"
        if slo.ttft_ms:
            prefill = step.prefill_ms(workload.prompt_tokens.max, candidate.engine.max_num_batched_tokens) * high
            if prefill > slo.ttft_ms:
                return f"{label}: a {workload.prompt_tokens.max}-token prefill alone takes up to {prefill:.0f} ms " \
                       f"(TTFT SLO {slo.ttft_ms:g} ms)"
        if slo.itl_ms:
            decode = step.decode_step_ms(1, workload.prompt_tokens.max + workload.output_tokens.max) * high
            if decode > slo.itl_ms:
                return f"{label}: one decode step alone takes up to {decode:.1f} ms (ITL SLO {slo.itl_ms:g} ms)"
        return None

    def _candidates(self, instance: Instance, caps: DeviceCaps, reasons: list[str]):
        arch, request = self.request.arch, self.request
        devices = _devices(instance)
        for precision in PRECISIONS:
            why = precision.unsupported_reason(caps)
            if why:
                reasons.append(why)
                continue
            for kv_dtype in kv_choices(precision):
                if kv_unsupported_reason(kv_dtype, caps):
                    continue
                for tp in tensor_parallel_degrees(arch, devices):
                    memory = fit(arch, precision, kv_dtype, _memory_gib(instance), tp, request.context,
                                 utilisation=request.gpu_memory_utilisation,
                                 kind="gpu" if instance.gpu is not None else "cpu")
                    if not memory.fits:
                        reasons.append(memory.reason or "does not fit")
                        self._memory_miss(instance, precision, kv_dtype, memory)
                        continue
                    self._anything_fitted = True
                    kv_tokens = int(memory.max_concurrent_sequences * request.context)
                    for seqs, chunk in ENGINE_SETTINGS:
                        engine = EngineConfig(max_num_seqs=max(1, min(seqs, memory.max_concurrent_sequences)),
                                              max_num_batched_tokens=chunk, kv_capacity_tokens=kv_tokens)
                        yield _Candidate(precision, kv_dtype, tp, memory, engine,
                                         precision.engines_for(caps)[0])

    def _row(self, instance: Instance, candidate: _Candidate, device: Device, step: StepModel,
             reasons: list[str]) -> LlmRow | None:
        key = (device, candidate.precision.name, candidate.kv_dtype, candidate.engine, candidate.serving_engine)
        if key not in self._simulated:
            rate, result = max_rate_meeting(step, self.request.workload, candidate.engine,
                                            self.request.slo.for_simulation())
            source = "fitted" if step.efficiency.source.startswith("fitted") else "roofline"
            self._simulated[key] = (rate, result, f"{source}: {step.efficiency.source}") if rate > 0 else None
        outcome = self._simulated[key]
        if outcome is None:
            reasons.append(f"{candidate.precision.name} TP {candidate.tensor_parallel}: misses the SLOs at any load")
            return None
        rate, result, source = outcome
        return _make_row(self.request, instance, candidate, rate, result, source)


def _cost_per_million(instance: Instance, candidate: _Candidate, rate_rps: float, workload: Workload) -> float:
    replicas = max(1, _devices(instance) // candidate.tensor_parallel)
    return instance.price_per_hour / (replicas * rate_rps * workload.output_tokens.mean * 3600.0) * 1e6


def _make_row(request: PlanRequest, instance: Instance, candidate: _Candidate, rate: float, result: SimResult,
              source: str) -> LlmRow:
    replicas = max(1, _devices(instance) // candidate.tensor_parallel)
    workload = request.workload
    percentile = request.slo.percentile
    output_per_s = replicas * rate * workload.output_tokens.mean  # cost: _cost_per_million, the same formula
    tokens_per_s = replicas * rate * (workload.output_tokens.mean + workload.prompt_tokens.mean)
    price = instance.price_per_hour
    ttft, itl, e2e = (result.ttft_ms[percentile], result.itl_ms[percentile], result.e2e_ms[percentile])
    ttft_interval = tuple(result.ttft_ms["interval"][percentile])
    itl_interval = tuple(result.itl_ms["interval"][percentile])
    instances_needed = math.ceil(request.qps / (replicas * rate)) if request.qps else None
    return LlmRow(
        instance=instance.name, provider=instance.provider, region=instance.region, price_per_hour=price,
        device=instance.gpu.model if instance.gpu else instance.cpu.microarchitecture, devices=_devices(instance),
        tensor_parallel=candidate.tensor_parallel, replicas=replicas, precision=candidate.precision.name,
        kv_cache_dtype=candidate.kv_dtype, max_num_seqs=candidate.engine.max_num_seqs,
        max_num_batched_tokens=candidate.engine.max_num_batched_tokens,
        max_concurrent_sequences=candidate.memory.max_concurrent_sequences, rate_rps=rate,
        ttft_ms=ttft, ttft_ms_interval=ttft_interval, itl_ms=itl, itl_ms_interval=itl_interval, e2e_ms=e2e,
        goodput_rps=replicas * result.goodput_rps,
        output_tokens_per_s=output_per_s, cost_per_million_output_tokens=price / (output_per_s * 3600.0) * 1e6,
        cost_per_million_tokens=price / (tokens_per_s * 3600.0) * 1e6, instances_needed=instances_needed,
        monthly_cost=instances_needed * price * HOURS_PER_MONTH if instances_needed else None,
        meets_slo=True, source=source.split(":")[0], efficiency_source=source.split(": ", 1)[-1],
        memory=candidate.memory.to_dict(), pareto_tokens_per_s_per_user=1000.0 / itl if itl > 0 else 0.0,
        engine=candidate.serving_engine)


def _summarise(reasons: list[str]) -> str:
    """The instance's most telling reason: how far memory falls short, else how far speed does, else what the
    device does not support."""
    if not reasons:
        return "no candidate"
    for marker in ("GiB usable", "alone takes", "at any load"):
        hit = next((r for r in reasons if marker in r), None)
        if hit:
            return hit
    return reasons[0]


def pareto_frontier(rows: list[LlmRow]) -> list[str]:
    """Instances not beaten on both per-user decode speed (higher) and cost per million output tokens (lower)."""
    frontier = []
    for row in rows:
        beaten = any(o is not row and o.pareto_tokens_per_s_per_user >= row.pareto_tokens_per_s_per_user
                     and o.cost_per_million_output_tokens <= row.cost_per_million_output_tokens
                     and (o.pareto_tokens_per_s_per_user > row.pareto_tokens_per_s_per_user
                          or o.cost_per_million_output_tokens < row.cost_per_million_output_tokens) for o in rows)
        if not beaten:
            frontier.append(row.instance)
    return frontier


def plan(request: PlanRequest) -> Plan:
    return Planner(request).plan()

