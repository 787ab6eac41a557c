"""The generative report's chart data: the fit map and the load curve of the recommended configuration, and the
points of the Pareto plot.

- fit map: the concurrent sequences one engine replica's KV cache holds at each context length (advisor.llm.memory:
  floor(KV budget per device / KV of one sequence of that length)), for the chosen precision, KV dtype and TP degree
  on the chosen instance. Arithmetic on the memory model: no interval, its overheads are estimates.
- load curve: the chosen configuration simulated (advisor.llm.simulate.simulate, the same seed and duration rule as
  the planner's final run) at fractions of its planned per-replica rate; TTFT, ITL and E2E at the SLO percentile
  with their 95 % intervals, and goodput. At fraction 1.0 it is the planner's own run, so it reproduces the row's
  figures (both capped at FINAL_MAX_REQUESTS requests).
- Pareto points: per-user decode speed (1000 / ITL at the SLO percentile) against cost per million output tokens.

The configuration is rebuilt through the planner's own pieces (the memory fit, `_device`, `Planner._step`), so the
curve uses the efficiency the plan used; a rebuild that differs from the row (another efficiency source or memory
fit) raises rather than chart a different configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from advisor.llm.memory import MemoryFit, fit, fit_map
from advisor.llm.perf import StepModel
from advisor.llm.plan import LlmRow, Planner, PlanRequest, _Candidate, _device, _memory_gib
from advisor.llm.precision import Precision, precision_named
from advisor.llm.simulate import FINAL_MAX_REQUESTS, MIN_REQUESTS, EngineConfig, SimResult, simulate
from advisor.llm.workload import Workload
from hwprofiles.catalog import Instance

FIRST_CONTEXT = 1024  # the fit map's shortest context; then doubling up to the model's max context
LOAD_FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
CURVE_SEED = 0  # max_rate_meeting's default seed: the point at 1.0 is the planner's final run
# a point simulates what the planner's final run does: the workload's duration, stretched to MIN_REQUESTS requests at
# low rates and capped at FINAL_MAX_REQUESTS (advisor.llm.simulate)


class ReportDataError(ValueError):
    """The rebuilt configuration does not match the plan's row: the chart would show another configuration."""


@dataclass(frozen=True)
class ChosenConfiguration:
    """A plan row rebuilt into the planner's objects: what it runs on, its memory fit, engine and step model."""

    instance: Instance
    precision: Precision
    memory: MemoryFit
    engine: EngineConfig
    step: StepModel
    replicas: int


def _instance(request: PlanRequest, row: LlmRow) -> Instance:
    for instance in request.catalog.instances:
        if (instance.name, instance.provider, instance.region) == (row.instance, row.provider, row.region):
            return instance
    raise ReportDataError(f"{row.instance} ({row.provider} {row.region}) is not in the plan's catalogue")


def _memory(request: PlanRequest, instance: Instance, precision: Precision, row: LlmRow, context: int) -> MemoryFit:
    """The planner's memory call (Planner._candidates) at `context`."""
    return fit(request.arch, precision, row.kv_cache_dtype, _memory_gib(instance), row.tensor_parallel, context,
               utilisation=request.gpu_memory_utilisation, kind="gpu" if instance.gpu is not None else "cpu")


def chosen_configuration(request: PlanRequest, row: LlmRow) -> ChosenConfiguration:
    """Rebuild `row`'s candidate as the planner built it; raises ReportDataError where the rebuild differs."""
    instance = _instance(request, row)
    precision = precision_named(row.precision)
    memory = _memory(request, instance, precision, row, request.context)
    if memory.max_concurrent_sequences != row.max_concurrent_sequences:
        raise ReportDataError(f"the rebuilt memory fit holds {memory.max_concurrent_sequences} sequences, the plan's "
                              f"row {row.max_concurrent_sequences}")
    engine = EngineConfig(max_num_seqs=row.max_num_seqs, max_num_batched_tokens=row.max_num_batched_tokens,
                          kv_capacity_tokens=int(memory.max_concurrent_sequences * request.context))
    device = _device(instance, precision, row.tensor_parallel)
    if device is None:
        raise ReportDataError(f"the catalogue lacks the peak figures of {row.instance}")
    step = Planner(request)._step(device, _Candidate(precision, row.kv_cache_dtype, row.tensor_parallel, memory,
                                                     engine, row.engine))
    if step.efficiency.source != row.efficiency_source:
        raise ReportDataError(f"the rebuilt step model's efficiency ({step.efficiency.source}) is not the plan's "
                              f"({row.efficiency_source}): build the PlanRequest the plan was given")
    return ChosenConfiguration(instance, precision, memory, engine, step, row.replicas)


def default_contexts(max_context: int, configured: int) -> list[int]:
    """FIRST_CONTEXT, doubling, up to the model's max context (included), and the configured context."""
    contexts = {max_context, configured}
    length = FIRST_CONTEXT
    while length < max_context:
        contexts.add(length)
        length *= 2
    return sorted(c for c in contexts if 0 < c <= max_context)


def fit_map_for(request: PlanRequest, row: LlmRow, contexts: Sequence[int] | None = None) -> list[dict]:
    """Per context length (default: default_contexts): the concurrent sequences the chosen configuration's KV cache
    holds, per replica and per instance (0: not even one fits). `configured` marks the planned --context."""
    instance = _instance(request, row)
    precision = precision_named(row.precision)
    lengths = list(contexts) if contexts is not None else default_contexts(request.arch.max_context, request.context)
    sequences = fit_map(request.arch, precision, row.kv_cache_dtype, _memory_gib(instance), row.tensor_parallel,
                        lengths, utilisation=request.gpu_memory_utilisation,
                        kind="gpu" if instance.gpu is not None else "cpu")
    return [{"context": context, "max_concurrent_sequences": sequences[context],
             "max_concurrent_sequences_per_instance": sequences[context] * row.replicas,
             "configured": context == request.context} for context in lengths]


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _at(workload: Workload, rate: float) -> Workload:
    """The workload at `rate` over the planner's final-run duration (max_rate_meeting), capped in requests."""
    duration = max(min(workload.duration_s, FINAL_MAX_REQUESTS / rate), MIN_REQUESTS / rate)
    return Workload(workload.prompt_tokens, workload.output_tokens, rate, workload.arrival,
                    workload.shared_prefix_fraction, duration)


def _point(fraction: float, rate: float, replicas: int, percentile: str, result: SimResult, meets: bool) -> dict:
    point = {"fraction": fraction, "rate_rps": rate, "instance_rate_rps": rate * replicas, "percentile": percentile}
    for name in ("ttft_ms", "itl_ms", "e2e_ms"):
        metric = getattr(result, name)
        point[name] = _finite(metric[percentile])
        point[f"{name}_interval"] = [_finite(v) for v in metric["interval"][percentile]]
    return point | {"goodput_rps": result.goodput_rps * replicas, "meets_slo": meets, "stable": result.stable,
                    "stable_pessimistic": result.stable_pessimistic, "requests": result.requests,
                    "completed": result.completed, "preemptions": result.preemptions,
                    "duration_s": result.duration_s, "warmup_s": result.warmup_s}


def load_curve_for(request: PlanRequest, row: LlmRow, fractions: Sequence[float] = LOAD_FRACTIONS) -> list[dict]:
    """The chosen configuration simulated at `fractions` x its planned per-replica rate, lowest first.

    Each point: `rate_rps` per replica (`instance_rate_rps` for the instance's replicas), TTFT/ITL/E2E at the SLO
    percentile with their 95 % intervals (efficiency band x block bootstrap; null for an unbounded upper end, where
    the pessimistic run's queue grows without bound), `goodput_rps` (per instance: requests per second meeting every
    SLO, each judged on its own latencies), `meets_slo` (every SLO at the interval's pessimistic end, the planner's
    test), and the simulated run's requests, duration and warm-up."""
    chosen = chosen_configuration(request, row)
    slos = request.slo.for_simulation()
    points = []
    for fraction in sorted(fractions):
        if not fraction > 0:
            raise ValueError(f"load fractions must be positive, got {fraction}")
        rate = row.rate_rps * fraction
        result = simulate(chosen.step, _at(request.workload, rate), chosen.engine, CURVE_SEED, slos=slos)
        points.append(_point(fraction, rate, chosen.replicas, slos.percentile, result, result.meets(slos)))
    return points


def pareto_points(rows: Sequence[LlmRow | dict]) -> list[dict]:
    """Each row as a point of the Pareto plot, cheapest first: `tokens_per_s_per_user` = 1000 / ITL at the SLO
    percentile (the decode speed one user sees; its interval from the ITL interval), `cost_per_million_output_tokens`
    at the row's planned rate, and `on_frontier`: no other row is at least as fast and as cheap, and better in one
    (plan.pareto_frontier's rule)."""
    data = [r.to_dict() if isinstance(r, LlmRow) else dict(r) for r in rows]
    points = []
    for row in data:
        itl, (low, high) = row["itl_ms"], row["itl_ms_interval"]
        points.append({"instance": row["instance"], "provider": row["provider"],
                       "tokens_per_s_per_user": 1000.0 / itl if itl and itl > 0 else 0.0,
                       "tokens_per_s_per_user_interval": [1000.0 / high if high and high > 0 else 0.0,
                                                          1000.0 / low if low and low > 0 else None],
                       "cost_per_million_output_tokens": row["cost_per_million_output_tokens"]})
    for point in points:
        speed, cost = point["tokens_per_s_per_user"], point["cost_per_million_output_tokens"]
        point["on_frontier"] = not any(
            o is not point and o["tokens_per_s_per_user"] >= speed and o["cost_per_million_output_tokens"] <= cost
            and (o["tokens_per_s_per_user"] > speed or o["cost_per_million_output_tokens"] < cost) for o in points)
    return sorted(points, key=lambda p: p["cost_per_million_output_tokens"])
