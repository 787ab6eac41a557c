"""A bench-serve result as a measurement record (advisor.llm.measurement/v1 with `serving`), and what a plan makes of
such records: the serving run measured on a catalogue instance, with the engine, precision and tensor-parallel
degree it was deployed with.

    advisor bench-serve URL ... --record run.json --instance g6e.xlarge --model-config ./Llama-3.1-8B \
        --precision fp8 --engine vllm
    advisor recommend ./Llama-3.1-8B ... --measurements run.json

In the plan such a record does two things: a run at low load calibrates the step model (advisor.llm.calibration,
`reduce_serving`), and the ranking row of that instance, precision and tensor-parallel degree gains
`measured_serving`: the measured percentiles at the SLO percentile, the achieved rate, and whether they meet the
SLOs at a rate at least the planned one. Only then is the row's source `measured`: the measurement confirms the
planned rate. A run at a lower rate, or one that misses, leaves the prediction as it was and says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path

from advisor.errors import UserError
from advisor.llm.architecture import LlmConfigError, load_architecture
from advisor.llm.measurement_record import Hardware, LlmMeasurement
from advisor.llm.precision import PrecisionError, precision_named
from hwprofiles.catalog import Instance


def instance_hardware(instance: Instance, precision_name: str, tensor_parallel: int) -> Hardware:
    """The record's hardware from the catalogue: per-device datasheet peaks at the precision's compute dtype."""
    from advisor.llm.plan import _device

    precision = precision_named(precision_name)
    device = _device(instance, precision, tensor_parallel)
    if device is None:
        raise UserError(f"the catalogue has no {precision.compute_dtype} peak or memory bandwidth for "
                        f"{instance.name}: the record would have no hardware figures")
    detail = {"instance": instance.name, "provider": instance.provider,
              "peaks_from": f"catalogue entry {instance.name} ({instance.spec_source})"}
    if instance.gpu is None:
        detail["microarchitecture"] = instance.cpu.microarchitecture
    if device.interconnect_gbs:
        detail |= {"interconnect_gbs": device.interconnect_gbs, "interconnect_kind": device.interconnect_kind}
    return Hardware("gpu" if instance.gpu is not None else "cpu",
                    instance.gpu.model if instance.gpu is not None else instance.cpu.model,
                    tensor_parallel if instance.gpu is not None else 1, device.peak_tflops,
                    device.memory_bandwidth_gbs, detail)


def serving_record(summary: dict, *, instance: Instance, model_config: Path, precision: str, tensor_parallel: int,
                   engine: str, engine_version: str, kv_dtype: str | None = None) -> LlmMeasurement:
    """An advisor.llm.measurement/v1 record holding the bench-serve `summary` as its serving run."""
    from advisor.llm.perf import model_work
    from advisor.llm.plan import kv_choices

    try:
        arch = load_architecture(Path(model_config))
        chosen = precision_named(precision)
    except (LlmConfigError, PrecisionError) as error:
        raise UserError(str(error)) from None
    kv = kv_dtype or kv_choices(chosen)[0]
    date = str(summary.get("started_at") or dt.datetime.now(dt.timezone.utc).isoformat())[:10]
    stamp = hashlib.sha256(str(summary.get("started_at")).encode()).hexdigest()[:8]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"bench-serve-{engine}-{arch.name}-{precision}-tp{tensor_parallel}-"
                                            f"{instance.name}-{date}-{stamp}").strip("-").lower()
    return LlmMeasurement(
        id=slug, date=date, source="advisor bench-serve", hardware=instance_hardware(instance, precision,
                                                                                      tensor_parallel),
        engine=engine, engine_version=engine_version, versions={"advisor": str(summary.get("advisor_version"))},
        model=f"{arch.name} ({arch.num_layers} layers, hidden {arch.hidden_size})", work=model_work(arch, chosen, kv),
        precision=precision, tensor_parallel=tensor_parallel, steps=(), serving=summary,
        notes=(f"served at {summary.get('server', {}).get('url')} as {summary.get('server', {}).get('model')!r}",))


def measured_serving(row: dict, records, slo: dict) -> dict | None:
    """What the newest serving record of this row's instance, precision and tensor-parallel degree measured, judged
    against the SLOs at their percentile (the pessimistic end of each interval)."""
    matching = [r for r in records if r.serving and r.hardware.detail.get("instance") == row["instance"]
                and r.precision == row["precision"] and r.tensor_parallel == row["tensor_parallel"]]
    if not matching:
        return None
    record = max(matching, key=lambda r: r.date)
    serving, p = record.serving, slo["percentile"]

    def at(metric: str) -> tuple[float | None, float | None]:
        figures = serving.get(metric) or {}
        interval = (figures.get("interval") or {}).get(p) or [None, None]
        return figures.get(p), interval[1]

    ttft, ttft_high = at("ttft_ms")
    itl, itl_high = at("itl_ms")
    meets = all(limit is None or (high if high is not None else value or float("inf")) <= limit
                for limit, value, high in ((slo.get("ttft_ms"), ttft, ttft_high), (slo.get("itl_ms"), itl, itl_high)))
    rate = serving.get("request_rate_rps") or 0.0
    replicas = max(1, row.get("replicas", 1))
    planned = row["rate_rps"] * replicas  # the row's rate is per replica; a server is the whole instance
    return {"measurement_id": record.id, "date": record.date, "percentile": p, "ttft_ms": ttft,
            "ttft_ms_high": ttft_high, "itl_ms": itl, "itl_ms_high": itl_high, "rate_rps": rate,
            "planned_rate_rps": planned, "goodput_rps": serving.get("goodput_rps"),
            "requests": serving.get("requests"), "errors": serving.get("errors"), "meets_slo": meets,
            "confirms_plan": bool(meets and rate >= planned * 0.95)}
