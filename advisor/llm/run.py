"""`advisor recommend` for a generative LLM: architecture -> workload -> plan over the catalogue -> report.json,
summary.md, report.html and a serving artifact (a vLLM launch configuration to deploy and a benchmark to check the
prediction)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import advisor
from advisor.environment import environment, now_iso
from advisor.errors import UserError
from advisor.llm.architecture import LlmArchitecture, LlmConfigError, load_architecture
from advisor.llm.calibration import load_measurements
from advisor.llm.engine import ENGINE_NAME
from advisor.llm.local_candidates import LocalCandidate, measure_candidates, unavailable_reason
from advisor.llm.plan import LlmRow, LlmSlo, Plan, PlanRequest, plan
from advisor.llm.workload import Workload, WorkloadError, load_workload
from advisor.runfolder import write_json_atomic
from hwprofiles.catalog import load_catalog
from hwprofiles.targets import Target, detect_targets

SCHEMA = "advisor.report/v1"
EXIT_CODES = {"recommended": 0, "no_slo_met": 3}


@dataclass(frozen=True)
class LlmRecommendConfig:
    source: Path  # a Hugging Face folder (config.json is enough) or a config.json
    slo: LlmSlo
    out_dir: Path
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    qps: float | None = None
    context: int | None = None  # default: prompt + output tokens rounded up, at most the model's context
    workload_path: Path | None = None
    catalog_paths: tuple[Path, ...] = ()
    providers: tuple[str, ...] = ()
    region: str | None = None
    json_path: Path | None = None
    make_artifact: bool = True
    gpu_memory_utilisation: float = 0.9
    measure: bool | None = None  # measure CPU candidates here: None when SOURCE has weights and the engine is installed
    measurement_paths: tuple[Path, ...] = ()  # --measurements: records (or bench-serve results) beside the stored ones


@dataclass(frozen=True)
class LlmRunResult:
    report: dict
    exit_code: int
    run_dir: Path


def _workload(config: LlmRecommendConfig, arch: LlmArchitecture) -> Workload:
    if config.workload_path is not None:
        try:
            workload = load_workload(config.workload_path)
        except WorkloadError as error:
            raise UserError(str(error)) from None
    else:
        if config.prompt_tokens is None or config.output_tokens is None:
            raise UserError("a generative model needs --prompt-tokens and --output-tokens (or --workload FILE)")
        workload = Workload.fixed(config.prompt_tokens, config.output_tokens, config.qps or 1.0)
    longest = workload.prompt_tokens.max + workload.output_tokens.max
    if longest > arch.max_context:
        raise UserError(f"prompt + output tokens ({longest}) exceed {arch.name}'s context of {arch.max_context}")
    if config.context is not None and config.context < longest:
        raise UserError(f"--context {config.context} is shorter than prompt + output tokens ({longest})")
    if config.context is not None and config.context > arch.max_context:
        raise UserError(f"--context {config.context} exceeds {arch.name}'s context of {arch.max_context}")
    return workload


def _context(config: LlmRecommendConfig, arch: LlmArchitecture, workload: Workload) -> int:
    if config.context is not None:
        return config.context
    longest = workload.prompt_tokens.max + workload.output_tokens.max
    return min(arch.max_context, 1 << math_ceil_log2(longest))


def math_ceil_log2(value: int) -> int:
    return max(0, (int(value) - 1).bit_length())


def recommend_llm(config: LlmRecommendConfig) -> LlmRunResult:
    # every input is checked before anything is written
    try:
        arch = load_architecture(config.source)
    except LlmConfigError as error:
        raise UserError(str(error)) from None
    if config.slo.ttft_ms is None and config.slo.itl_ms is None:
        raise UserError("a generative model needs --ttft and/or --itl (latency SLOs for the first token and "
                        "between tokens)")
    workload = _workload(config, arch)
    context = _context(config, arch, workload)
    catalog = load_catalog(list(config.catalog_paths), providers=list(config.providers) or None,
                           region=config.region)
    measurements = load_measurements(config.measurement_paths)  # a bad file: one line, before anything is written
    local_reason = unavailable_reason(config.source) if config.measure is not False else "--no-measure"
    if config.measure and local_reason:
        raise UserError(f"--measure: {local_reason}")
    started_at = now_iso()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    local: list[LocalCandidate] = []
    if local_reason is None:
        local = measure_candidates(config.source, config.out_dir / "work", workload, progress=_say)
    request = PlanRequest(arch=arch, workload=workload, slo=config.slo, context=context, catalog=catalog,
                          qps=config.qps, gpu_memory_utilisation=config.gpu_memory_utilisation,
                          measurements=tuple(measurements) + tuple(c.record for c in local if c.ok))
    result = plan(request)
    artifact_path, artifact_error = None, None
    if result.recommendation is not None and config.make_artifact:
        artifact_path, artifact_error = _write_artifact(config, arch, workload, context, result.recommendation, local)
    report = build_llm_report(config, request, result, started_at, artifact_path, artifact_error,
                              LocalRun(local, local_reason))
    write_llm_report(report, config.out_dir, config.json_path)
    return LlmRunResult(report, EXIT_CODES[report["status"]], config.out_dir)


def _say(text: str) -> None:
    import sys

    print(f"advisor: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LocalRun:
    """The candidates measured on this machine, or why none was."""

    candidates: list[LocalCandidate]
    skipped_because: str | None

    def to_dict(self) -> dict:
        return {"engine": "onnxruntime-genai", "skipped_because": self.skipped_because,
                "candidates": [c.to_dict() for c in self.candidates]}


def _write_artifact(config: LlmRecommendConfig, arch: LlmArchitecture, workload: Workload, context: int,
                    row: LlmRow, local: list[LocalCandidate]) -> tuple[Path | None, str | None]:
    if row.engine == ENGINE_NAME:
        return _write_engine_artifact(config, arch, row, local)
    from advisor.llm.deployment import LlmDeployment
    from advisor.llm.serving_artifact import write_serving_artifact
    from advisor.llm.precision import KV_VLLM_FLAG, precision_named

    precision = precision_named(row.precision)
    deployment = LlmDeployment(
        model=str(config.source), served_model_name=arch.name, instance=row.instance, provider=row.provider,
        gpu_model=row.device, gpus=row.devices, tensor_parallel=row.tensor_parallel, precision=row.precision,
        vllm_quantization=precision.vllm_quantization, dtype=precision.vllm_dtype,
        kv_cache_dtype=KV_VLLM_FLAG[row.kv_cache_dtype], max_model_len=context,
        max_num_seqs=row.max_num_seqs, max_num_batched_tokens=row.max_num_batched_tokens,
        gpu_memory_utilization=config.gpu_memory_utilisation, enable_chunked_prefill=True,
        workload=workload.to_dict() | {"rate_rps": row.rate_rps},
        slo=config.slo.to_dict(),
        predicted={"ttft_ms": row.ttft_ms, "ttft_ms_interval": list(row.ttft_ms_interval), "itl_ms": row.itl_ms,
                   "itl_ms_interval": list(row.itl_ms_interval), "e2e_ms": row.e2e_ms,
                   "goodput_rps": row.goodput_rps, "source": row.source})
    problems = deployment.problems()
    if problems:
        return None, "; ".join(problems)
    try:
        return write_serving_artifact(deployment, config.out_dir / "artifact"), None
    except (OSError, ValueError) as error:
        return None, str(error)


def _write_engine_artifact(config: LlmRecommendConfig, arch: LlmArchitecture, row: LlmRow,
                           local: list[LocalCandidate]) -> tuple[Path | None, str | None]:
    """A CPU recommendation served by ONNX Runtime GenAI ships the engine built and checked in this run."""
    from advisor.llm.engine import BuiltModel
    from advisor.llm.engine_artifact import write_engine_artifact
    from advisor.llm.reference import ReferenceCheck

    built = next((c for c in local if c.ok and c.precision == row.precision), None)
    if built is None:
        return None, (f"the {row.precision} {ENGINE_NAME} engine was not built in this run (it needs SOURCE's weights "
                      f"and the advisor[llm] extra); rerun on the folder with its weights")
    try:
        path = write_engine_artifact(
            BuiltModel(built.built_folder, built.precision, config.source, built.build_s or 0.0, ()),
            config.out_dir / "artifact", served_model_name=arch.name,
            check=ReferenceCheck(**built.check) if built.check else None,
            measured={"ttft_ms": built.ttft_ms, "itl_ms": built.itl_ms, "peak_memory_mib": built.peak_memory_mib,
                      "instance": row.instance, "predicted": {"ttft_ms": row.ttft_ms, "itl_ms": row.itl_ms,
                                                              "rate_rps": row.rate_rps}})
        return path, None
    except (OSError, ValueError) as error:
        return None, str(error)


def _sha256(path: Path) -> str:
    config = path / "config.json" if path.is_dir() else path
    return hashlib.sha256(config.read_bytes()).hexdigest()


def build_llm_report(config: LlmRecommendConfig, request: PlanRequest, result: Plan, started_at: str,
                     artifact_path: Path | None, artifact_error: str | None, local: LocalRun) -> dict:
    arch, workload, context = request.arch, request.workload, request.context
    targets = detect_targets()
    rows = [r.to_dict() for r in result.rows]
    _mark_measured_here(rows, local.candidates, request, targets)
    _mark_measured_serving(rows, request)
    recommendation = None
    if result.recommendation is not None:
        rec = dict(rows[0])  # the first row is the recommendation, with what _mark_measured_here added
        if rec["instance"] != result.recommendation.instance:  # the plan's contract; a report must never mislabel
            raise RuntimeError(f"the plan's recommendation {result.recommendation.instance} is not its first row "
                               f"({rec['instance']})")
        runner_up = next((r for r in rows if r["instance"] != rec["instance"]), None)
        recommendation = {**rec, "artifact": str(artifact_path) if artifact_path else None,
                          "artifact_error": artifact_error, "runner_up": runner_up, "why": _why(rec, runner_up)}
    fit_map, load_curve = None, None  # the recommended configuration's charts (advisor/llm/report_data.py)
    if result.recommendation is not None:
        from advisor.llm.report_data import fit_map_for, load_curve_for

        # the plan's own request: report_data raises if it does not reproduce the row's efficiency
        fit_map = fit_map_for(request, result.recommendation)
        load_curve = load_curve_for(request, result.recommendation)
    return {
        "schema": SCHEMA,
        "advisor_version": advisor.__version__,
        "mode": "generative",
        "status": "recommended" if recommendation else "no_slo_met",
        "model": {"path": str(config.source), "sha256": _sha256(config.source), "llm": arch.to_dict()},
        "slo": config.slo.to_dict(),
        "workload": {**workload.to_dict(), "context": context},
        "settings": {"qps": config.qps, "context": context, "gpu_memory_utilisation": config.gpu_memory_utilisation,
                     "catalogs": [str(p) for p in config.catalog_paths], "providers": list(config.providers),
                     "region": config.region, "measurements": [str(p) for p in config.measurement_paths]},
        "trials": [],
        "ranking": rows,
        "recommendation": recommendation,
        "closest_miss": result.closest_memory_miss,
        "excluded": result.excluded,
        "pareto": result.pareto,
        "fit_map": fit_map,
        "load_curve": load_curve,
        "local_measurements": local.to_dict(),
        "measurements_loaded": sorted({m.id for m in request.measurements}),
        "environment": environment(targets, started_at),
    }


def _mark_measured_here(rows: list[dict], local: list[LocalCandidate], request: PlanRequest,
                        targets: list[Target]) -> None:
    """Rows of the catalogue instance this machine is (same CPU and vCPUs) and a precision measured here gain
    `measured_here`: the engine's TTFT and inter-token latency measured one sequence at a time (no load), beside the
    planned figures at the row's rate."""
    from advisor.ranking import matches

    measured = {c.precision: c for c in local if c.ok}
    if not measured:
        return
    target = next((t for t in targets if t.kind == "cpu"), None)
    here = {i.name for i in request.catalog.instances if target is not None and matches(i, target)}
    for row in rows:
        candidate = measured.get(row["precision"])
        if row["instance"] in here and row["engine"] == ENGINE_NAME and candidate is not None:
            row["measured_here"] = {"ttft_ms": candidate.ttft_ms, "itl_ms": candidate.itl_ms,
                                    "load": "one sequence at a time (no load)",
                                    "measurement_id": candidate.record.id if candidate.record else None}


def _mark_measured_serving(rows: list[dict], request: PlanRequest) -> None:
    """Rows with a bench-serve record of their instance, precision and tensor-parallel degree gain
    `measured_serving`; their source becomes `measured` only when that run met the SLOs at the planned rate
    (advisor.llm.serving_record)."""
    from advisor.llm.serving_record import measured_serving

    served = [m for m in request.measurements if m.serving]
    for row in rows if served else []:
        judged = measured_serving(row, served, request.slo.to_dict())
        if judged is not None:
            row["measured_serving"] = judged
            if judged["confirms_plan"]:
                row["source"] = "measured"


def _why(rec: dict, runner_up: dict | None) -> str:
    head = (f"{rec['precision']} weights, KV cache {rec['kv_cache_dtype']}, tensor parallel {rec['tensor_parallel']}"
            f" x {rec['replicas']} replica(s), max {rec['max_num_seqs']} sequences: "
            f"${rec['cost_per_million_output_tokens']:.3g} per million output tokens at "
            f"{rec['goodput_rps']:.3g} requests/s meeting the SLOs")
    if runner_up is None:
        return head + "; no other instance meets the SLOs"
    ratio = runner_up["cost_per_million_output_tokens"] / rec["cost_per_million_output_tokens"]
    return head + (f"; the runner-up, {runner_up['instance']} ({runner_up['precision']}, TP "
                   f"{runner_up['tensor_parallel']}), costs {ratio:.2f}x as much per token")


def write_llm_report(report: dict, run_dir: Path, json_copy: Path | None) -> None:
    """report.json, then report.html and summary.md rendered from it, each written atomically; the --json copy."""
    from advisor.llm.summary import render_llm_markdown
    from advisor.runfolder import write_atomic
    from reports.render import render_llm_html

    write_json_atomic(run_dir / "report.json", report)
    write_atomic(run_dir / "report.html", render_llm_html(report))
    write_atomic(run_dir / "summary.md", render_llm_markdown(report))
    if json_copy is not None:
        json_copy.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(json_copy, report)
