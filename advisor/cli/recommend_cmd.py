"""`advisor recommend MODEL --slo 400ms`."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import click

from advisor.cli.export_cmd import build_options, export_options
from advisor.cli.options import DurationType, IntListType, LatencyType, input_shape_option, shapes_dict
from advisor.config import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_BUDGET_S,
    DEFAULT_TOLERANCE,
    ExportSpec,
    RecommendConfig,
    tvm_rpc_device,
)
from advisor.exporting import source_kind
from advisor.exporting.sources import ONNX, SUFFIX_KINDS
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec
from advisor.slo import PERCENTILE_CHOICES, Slo

EXPORTED_MODEL = "model.onnx"  # where a non-ONNX SOURCE is exported to, inside the run folder


def _default_out(source: str, exported: bool) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(source).stem
    if exported:  # a folder's name, or `pkg.mod:build` -> `pkg.mod-build`
        name = re.sub(r"[^\w.-]+", "-", source.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]).strip("-.")
    return Path("advisor-runs") / f"{name or 'model'}-{stamp}"


def _needs_export(source: str) -> bool:
    """Whether SOURCE must be exported to ONNX first. ONNX files keep the path they always had (the loader's checks
    and messages), and so does an existing file of any suffix other than PyTorch's: it is read as ONNX."""
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix == ".onnx" or (path.is_file() and suffix not in SUFFIX_KINDS):
        return False
    return source_kind(source) != ONNX


def _export_spec(source: str, opset, fp16, task, input_shapes) -> ExportSpec | None:
    if _needs_export(source):
        return ExportSpec(source, build_options(opset, fp16, task, input_shapes))
    given = [flag for flag, value in (("--opset", opset), ("--fp16", fp16), ("--task", task)) if value]
    if given:
        raise click.UsageError(f"{', '.join(given)} given, but {source} is an ONNX file, measured as it is: export "
                               f"options apply only to a SOURCE that is exported")
    return None


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@click.command()
@click.argument("source", metavar="SOURCE")
@click.option("--slo", "slo_ms", type=LatencyType(), default=None,
              help="Latency SLO: 400ms, 0.4s or 400 (milliseconds). Required for a fixed-shape model.")
@click.option("--ttft", "ttft_ms", type=LatencyType(), default=None,
              help="Generative LLM: time-to-first-token SLO, e.g. 800ms.")
@click.option("--itl", "itl_ms", type=LatencyType(), default=None,
              help="Generative LLM: inter-token latency SLO, e.g. 60ms.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=None, help="Generative LLM: prompt length.")
@click.option("--output-tokens", type=click.IntRange(min=1), default=None,
              help="Generative LLM: tokens generated per request.")
@click.option("--context", type=click.IntRange(min=1), default=None,
              help="Generative LLM: the max model length served (default: prompt + output, rounded up to a power "
                   "of two).")
@click.option("--workload", "workload_path", type=click.Path(path_type=Path), default=None,
              help="Generative LLM: a workload file (length distributions, arrival rate; docs/llm.md).")
@click.option("--measure/--no-measure", "measure", default=None,
              help="Generative LLM: build and measure CPU candidates (ONNX Runtime GenAI fp32/int4) on this machine "
                   "(default: when SOURCE has weights and the advisor[llm] extra is installed).")
@click.option("--measurements", "measurement_paths", type=click.Path(path_type=Path), multiple=True,
              help="Generative LLM: measurement records (advisor.llm.measurement/v1) or folders of them that "
                   "calibrate the performance model beside the stored ones (repeatable; docs/llm.md).")
@click.option("--generative/--fixed-shape", "generative", default=None,
              help="Plan SOURCE as a generative LLM, or export and measure it as a fixed-shape model (default: "
                   "generative for a causal-LM config).")
@click.option("--percentile", type=click.Choice(PERCENTILE_CHOICES), default="p99", show_default=True,
              help="Latency percentile the SLO applies to.")
@input_shape_option
@export_options
@click.option("--budget", "budget_s", type=DurationType(), default=f"{DEFAULT_BUDGET_S:.0f}s", show_default=True,
              help="Wall-clock cap on all tuning and measuring, e.g. 90s, 3m.")
@click.option("--batch-sizes", type=IntListType(), default=",".join(map(str, DEFAULT_BATCH_SIZES)),
              show_default=True, help="Batch sizes measured for throughput sizing.")
@click.option("--batch", "batch_size", type=click.IntRange(min=1), default=None,
              help="Judge the SLO at this batch size instead of 1.")
@click.option("--backends", default=None, help="Comma-separated backends to try (default: all available).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Run folder (default: advisor-runs/MODEL-TIMESTAMP).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out, re-measuring nothing.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Also write a copy of report.json here.")
@click.option("--catalog", "catalogs", type=click.Path(path_type=Path), multiple=True,
              help="Extra instance catalogue (YAML/JSON) adding or replacing entries (repeatable).")
@click.option("--provider", "providers", default=None, help="Only these clouds, e.g. aws,gcp.")
@click.option("--region", default=None, help="Only instances priced in this region.")
@click.option("--qps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Target load in inferences per second: sizes the fleet and its monthly cost.")
@click.option("--utilisation", type=click.FloatRange(min=0, max=1, min_open=True), default=0.7, show_default=True,
              help="Utilisation cap per instance when sizing for --qps.")
@click.option("--local-price", "local_price", type=click.FloatRange(min=0, min_open=True), default=None,
              help="USD per hour of this machine, to price it when no catalogue instance matches it.")
@click.option("--tolerance", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TOLERANCE,
              show_default=True, help="Max relative output error accepted from reduced-precision candidates "
                                      "(without --eval-data).")
@click.option("--calibration-data", "calibration_data", default=None, metavar="FOLDER|module:function",
              help="Inputs to calibrate static int8 on: a folder of .npz/.npy files, one sample per file, or a "
                   "function returning input dicts (default: synthetic inputs, and the report says so).")
@click.option("--eval-data", "eval_data", default=None, metavar="FOLDER|module:function",
              help="Samples with expected results: reduced-precision candidates are accepted only if their metric on "
                   "them stays within --max-accuracy-drop of the fp32 reference's (docs/quantization.md).")
@click.option("--eval-metric", "eval_metric", default=None, metavar="module:function",
              help="function(outputs, expected) -> float, higher is better (default: top-1 accuracy for integer "
                   "labels, else mean cosine similarity to the expected outputs).")
@click.option("--max-accuracy-drop", "max_accuracy_drop", type=float, default=None,
              help="Largest drop of the --eval-data metric accepted from a reduced-precision candidate "
                   "[default: 0.01].")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Tuning databases and caches shared between runs (default: the user cache dir).")
@click.option("--min-time", "min_time", type=DurationType(), default="1s", show_default=True,
              help="Minimum timed duration per candidate (more gives tighter intervals).")
@click.option("--trial-timeout", "trial_timeout", type=DurationType(), default=None,
              help="Time-out per isolated build/measure worker (default: from the backend's budget share).")
@click.option("--memory-limit", "memory_limit", type=click.FloatRange(min=1), default=None, metavar="MIB",
              help="Memory limit per worker in MiB (default: 80% of this machine's memory).")
@click.option("--cluster", default=None, metavar="ray://HOST:PORT|auto",
              help="Also profile on the Ray cluster's instance nodes (see docs/cluster.md).")
@click.option("--tvm-rpc", "tvm_rpc", default=None, metavar="HOST:PORT",
              help="TVM RPC tracker: also tune TVM on the device registered there with --tvm-rpc-key, compiling "
                   "here and measuring there (see docs/cluster.md).")
@click.option("--tvm-rpc-key", "tvm_rpc_key", default=None, metavar="KEY",
              help="Key the device registered with at the --tvm-rpc tracker.")
@click.option("--tvm-rpc-target", "tvm_rpc_target", default=None, metavar="JSON",
              help="TVM target of the --tvm-rpc device as a JSON object, e.g. '{\"kind\": \"llvm\", \"mtriple\": "
                   "\"aarch64-linux-gnu\", \"mcpu\": \"cortex-a72\", \"num-cores\": 4}' (default: what the device "
                   "reports).")
@click.option("--no-artifact", is_flag=True, help="Skip exporting the deployable artifact.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display on stderr.")
def recommend(source, slo_ms, ttft_ms, itl_ms, prompt_tokens, output_tokens, context, workload_path, measure,
              measurement_paths, generative, percentile, input_shapes, opset, fp16, task, budget_s, batch_sizes,
              batch_size, backends, out_dir, resume, json_path, catalogs, providers, region, qps, utilisation,
              local_price, tolerance, cache_dir, min_time, trial_timeout, memory_limit, cluster, tvm_rpc, tvm_rpc_key,
              tvm_rpc_target, no_artifact, quiet, calibration_data, eval_data, eval_metric, max_accuracy_drop):
    """Tune SOURCE on every backend this machine can run, rank cloud instances by cost under the SLO, and write
    the report and a deployable artifact.

    SOURCE is an ONNX file, or anything `advisor export` takes (a local Hugging Face model folder, a TorchScript
    or torch.export file, module:callable): that is exported to RUN/model.onnx first (--input-shape then also
    gives the example inputs) and the export's numerical difference is recorded in report.json.

    A causal language model (a Hugging Face folder whose config.json is enough: weights are optional) is
    planned instead, under --ttft/--itl with --prompt-tokens/--output-tokens (or --workload): every catalogue
    instance, precision, KV-cache dtype, tensor-parallel degree and engine setting, ranked by cost per million
    output tokens, with a vLLM launch configuration as the artifact (docs/llm.md). When the folder has weights,
    its CPU candidates (ONNX Runtime GenAI fp32 and int4) are also built, checked against transformers and measured
    here; a CPU recommendation then ships that engine, servable with `python -m advisor.runtime ARTIFACT --serve`.

    Exit status: 0 a recommendation was made, 3 nothing meets the SLO, 4 no candidate could be measured (each
    failed to build, crashed or failed its numerical check), 2 bad input, 1 internal error.
    """
    from advisor.pipeline import recommend as run_recommend
    from advisor.progress import Progress, RichProgress
    from advisor.summary import print_summary
    from tuners.registry import parse_backends

    if _generative_mode(source, generative, slo_ms, ttft_ms, itl_ms):
        return _recommend_generative(source, ttft_ms, itl_ms, percentile, prompt_tokens, output_tokens, context,
                                     workload_path, qps, out_dir, json_path, catalogs, providers, region, no_artifact,
                                     measure, measurement_paths)
    if slo_ms is None:
        raise click.UsageError("Missing option '--slo'.")
    if resume and out_dir is None:
        raise click.UsageError("--resume needs --out pointing at the run folder to continue")
    chosen_backends = tuple(parse_backends(backends))  # reads the registry (and ADVISOR_TUNERS) before any work
    extra = {"cache_dir": cache_dir} if cache_dir else {}
    export = _export_spec(source, opset, fp16, task, input_shapes)
    out_dir = out_dir or _default_out(source, export is not None)
    config = RecommendConfig(
        model=ModelSpec(out_dir / EXPORTED_MODEL if export else Path(source), shapes_dict(input_shapes)),
        slo=Slo(slo_ms, percentile),
        out_dir=out_dir,
        budget_s=budget_s,
        batch_sizes=batch_sizes,
        batch_size=batch_size,
        backends=chosen_backends if backends else (),
        resume=resume,
        json_path=json_path,
        catalog_paths=tuple(catalogs),
        providers=_csv(providers),
        region=region,
        qps=qps,
        utilisation=utilisation,
        local_price_per_hour=local_price,
        tolerance=tolerance,
        harness=HarnessSettings(min_time_s=min_time, max_time_s=max(10.0, min_time * 5)),
        make_artifact=not no_artifact,
        cluster=cluster,
        tvm_rpc=tvm_rpc_device(tvm_rpc, tvm_rpc_key, tvm_rpc_target),
        trial_timeout_s=trial_timeout,
        memory_limit_mib=memory_limit,
        export=export,
        calibration_data=calibration_data,
        eval_data=eval_data,
        eval_metric=eval_metric,
        max_accuracy_drop=max_accuracy_drop,
        **extra,
    )
    progress = Progress() if quiet else RichProgress(percentile)
    try:
        result = run_recommend(config, progress)
    finally:
        progress.close()
    print_summary(result.report, result.run_dir)
    return result.exit_code


def _generative_mode(source: str, generative: bool | None, slo_ms, ttft_ms, itl_ms) -> bool:
    """--generative/--fixed-shape decide; else --ttft/--itl mean generative; else a causal-LM config does, unless
    --slo asks for a fixed-shape run (ambiguous: refused with the way out)."""
    from advisor.llm.detect import is_generative_source

    if generative is not None:
        return generative
    if ttft_ms is not None or itl_ms is not None:
        if slo_ms is not None:
            raise click.UsageError("--slo is the SLO of a fixed-shape model; a generative one takes --ttft/--itl")
        return True
    if is_generative_source(source):
        if slo_ms is not None:
            raise click.UsageError(f"{source} is a causal language model: plan it with --ttft/--itl, or pass "
                                   f"--fixed-shape to export it to ONNX and measure it under --slo")
        return True
    return False


def _recommend_generative(source, ttft_ms, itl_ms, percentile, prompt_tokens, output_tokens, context, workload_path,
                          qps, out_dir, json_path, catalogs, providers, region, no_artifact, measure,
                          measurement_paths) -> int:
    from advisor.llm.plan import LlmSlo
    from advisor.llm.run import LlmRecommendConfig, recommend_llm
    from advisor.llm.summary import print_llm_summary

    config = LlmRecommendConfig(
        source=Path(source), slo=LlmSlo(ttft_ms, itl_ms, percentile), out_dir=out_dir or _default_out(source, True),
        prompt_tokens=prompt_tokens, output_tokens=output_tokens, qps=qps, context=context,
        workload_path=workload_path, catalog_paths=tuple(catalogs), providers=_csv(providers), region=region,
        json_path=json_path, make_artifact=not no_artifact, measure=measure,
        measurement_paths=tuple(measurement_paths))
    result = recommend_llm(config)
    print_llm_summary(result.report, result.run_dir)
    return result.exit_code
