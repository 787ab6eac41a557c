"""Generative candidates measured on this machine: when SOURCE holds weights (a Hugging Face folder with
safetensors) and ONNX Runtime GenAI is installed, each CPU precision it serves (fp32, int4 weight-only) is built,
checked against the transformers reference on the same weights, and measured here (advisor.llm.measure_local). A
candidate that fails (build, check, crash, time-out) is recorded with its reason; the others go on.

What the measurements feed: their step records join the calibration of the planner (advisor.llm.calibration: a
model whose weights stay in the caches is reported but not fitted), the report lists each candidate's measured TTFT
and inter-token latency (one sequence, no load), and a CPU recommendation ships the built engine as its artifact.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from advisor.isolation import run_isolated
from advisor.llm.measurement_record import LlmMeasurement
from advisor.llm.workload import Workload

LOCAL_PRECISIONS = ("fp32", "int4-wo")
MAX_MEMORY_SHARE = 0.4  # the fp32 weights, loaded twice at once (engine + reference), must fit in this share of RAM
BUILD_TIMEOUT_S = 900.0
CHECK_TIMEOUT_S = 600.0
MEASURE_TIMEOUT_S = 900.0
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


@dataclass(frozen=True)
class LocalCandidate:
    precision: str
    status: str  # "ok" | "failed"
    reason: str | None  # why it failed
    build_s: float | None = None
    check: dict | None = None  # advisor.llm.reference.ReferenceCheck as a dict
    ttft_ms: dict | None = None  # one sequence at a time: p50/p90/p95/p99, interval of p50, by prompt length
    itl_ms: dict | None = None
    peak_memory_mib: float | None = None
    record: LlmMeasurement | None = None
    built_folder: Path | None = None  # where the engine was built (the run folder): the artifact copies it

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return {"precision": self.precision, "engine": "onnxruntime-genai", "status": self.status,
                "reason": self.reason, "build_s": self.build_s, "reference_check": self.check,
                "ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms, "peak_memory_mib": self.peak_memory_mib,
                "measurement_id": self.record.id if self.record else None,
                "steps": [s.to_dict() for s in self.record.steps] if self.record else []}


def weight_bytes_on_disk(source: Path) -> int:
    source = Path(source)
    if not source.is_dir():
        return 0
    return sum(path.stat().st_size for pattern in WEIGHT_PATTERNS for path in source.glob(pattern))


def unavailable_reason(source: Path) -> str | None:
    """None when SOURCE can be measured here; else why not (one line)."""
    from advisor.llm.engine import genai_unavailable

    weights = weight_bytes_on_disk(source)
    if weights == 0:
        return f"{source} has no weights (config.json only): planned from the architecture, nothing measured here"
    why = genai_unavailable()
    if why:
        return why
    available = psutil.virtual_memory().available
    fp32_bytes = weights * (2 if _is_half(source) else 1)
    if 2 * fp32_bytes > MAX_MEMORY_SHARE * available:
        return (f"its fp32 weights ({fp32_bytes / 2**30:.1f} GiB, loaded twice for the reference check) exceed "
                f"{MAX_MEMORY_SHARE:.0%} of this machine's available memory ({available / 2**30:.1f} GiB)")
    return None


def _is_half(source: Path) -> bool:
    import json

    try:
        dtype = json.loads((Path(source) / "config.json").read_text()).get("torch_dtype") or ""
    except (OSError, ValueError):
        return False
    return str(dtype) in ("float16", "bfloat16")


def settings_for(workload: Workload):
    """Two prompt lengths (32 and the workload's mean, at most 512: a CPU prefill grows with it) and batches 1/2/4."""
    from advisor.llm.measure_local import LocalMeasureSettings

    mean_prompt = int(min(512, max(33, round(workload.prompt_tokens.mean))))
    return LocalMeasureSettings(prompt_lengths=(32, mean_prompt), batch_sizes=(1, 2, 4), new_tokens=16, repeats=5)


def _check_in_child(hf_folder: Path, built) -> dict:
    from advisor.llm.reference import check_against_reference

    return check_against_reference(hf_folder, built).to_dict()


def measure_candidates(source: Path, work_dir: Path, workload: Workload,
                       precisions: tuple[str, ...] = LOCAL_PRECISIONS, progress=None) -> list[LocalCandidate]:
    """Build, check and measure each precision under `work_dir` (the run folder's); never raises for a candidate."""
    from advisor.llm.engine import EngineError, build_genai_model
    from advisor.llm.measure_local import measure_local

    say = progress or (lambda text: None)
    settings = settings_for(workload)
    results = []
    for precision in precisions:
        dest = Path(work_dir) / f"onnxruntime-genai-{precision}"
        if dest.exists():
            shutil.rmtree(dest)
        say(f"building {precision} with onnxruntime-genai")
        try:
            built = build_genai_model(Path(source), dest, precision, timeout_s=BUILD_TIMEOUT_S)
        except EngineError as error:
            results.append(LocalCandidate(precision, "failed", f"build: {error}"))
            continue
        say(f"checking {precision} against the transformers reference")
        checked = run_isolated(_check_in_child, (Path(source), built), timeout_s=CHECK_TIMEOUT_S)
        if not checked.ok:
            results.append(LocalCandidate(precision, "failed", f"reference check: {checked.reason}", built.build_s))
            continue
        check = checked.value
        if not check["passed"]:
            results.append(LocalCandidate(precision, "failed", f"reference check: {check['detail']}", built.build_s,
                                          check))
            continue
        say(f"measuring {precision} on this CPU")
        try:
            measured = measure_local(built, Path(source), settings, timeout_s=MEASURE_TIMEOUT_S)
        except EngineError as error:
            results.append(LocalCandidate(precision, "failed", f"measurement: {error}", built.build_s, check))
            continue
        results.append(LocalCandidate(precision, "ok", None, built.build_s, check, measured.ttft_ms, measured.itl_ms,
                                      measured.peak_memory_mib, measured.record, built.folder))
    return results
