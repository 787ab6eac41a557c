"""GPU detection and the GPU candidates of the ONNX Runtime backend.

nvidia-smi parsing runs everywhere against a stand-in nvidia-smi script that prints what real drivers print; the
ONNX Runtime CUDA candidate and the speed-up over the CPU need an NVIDIA GPU (skipped with the reason).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from gpu import cuda_target, requires_gpu, requires_ort_cuda, requires_tensorrt
from hwprofiles.catalog import load_catalog
from hwprofiles.targets import GPU_CATALOG_TYPES, catalog_gpu_type, detect_gpus
from tuners.base import Candidate, TuneContext
from tuners.onnxruntime import CPU_PROVIDER, stock_config
from tuners.tensorrt_engine import baseline_config

FAST = HarnessSettings(warmup=3, min_iterations=20, min_time_s=0.2, max_time_s=3.0, bootstrap_resamples=200)
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# --- product names -> catalogue GPU types ---------------------------------------------------------------------


@pytest.mark.parametrize("smi_name, catalog_type", [
    ("Tesla T4", "T4"),
    ("NVIDIA T4", "T4"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A100-SXM4-40GB", "A100"),
    ("NVIDIA A100-SXM4-80GB", "A100"),
    ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100"),
    ("NVIDIA H100 NVL", "H100"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200"),
    # Near misses must not borrow another GPU's instances.
    ("NVIDIA L40", None),
    ("NVIDIA GeForce RTX 4090", None),
    ("NVIDIA RTX A6000", None),
    ("NVIDIA A40", None),
    ("NVIDIA GH200 480GB", None),
])
def test_nvidia_smi_names_map_to_catalogue_types(smi_name, catalog_type):
    assert catalog_gpu_type(smi_name) == catalog_type


def test_every_catalogue_gpu_is_reachable_from_detection():
    mapped = {catalog_type for _, catalog_type in GPU_CATALOG_TYPES}
    in_catalogue = {instance.gpu.model for instance in load_catalog().instances if instance.gpu is not None}
    assert in_catalogue <= mapped


# --- nvidia-smi parsing, against a stand-in nvidia-smi --------------------------------------------------------

HEADER = """+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""


def fake_nvidia_smi(folder: Path, monkeypatch, query_output: str, header: str = HEADER,
                    query_error: str | None = None, legacy_output: str | None = None) -> None:
    """Put an `nvidia-smi` first on PATH that answers the way a driver does. `query_error`: the query with
    compute_cap fails with that message (drivers before R510); `legacy_output` answers the query without it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in {"query.txt": query_output, "header.txt": header, "legacy.txt": legacy_output or ""}.items():
        (folder / name).write_text(text)
    failing = f'echo "{query_error}" >&2; exit 2' if query_error else f'cat "{folder}/query.txt"'
    script = folder / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
case "$*" in
  *compute_cap*) {failing} ;;
  *--query-gpu*) cat "{folder}/legacy.txt" ;;
  *) cat "{folder}/header.txt" ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")


def test_detect_gpus_reads_nvidia_smi(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "0, NVIDIA A10G, 23028, 8.6, 535.104.05\n"
                                           "1, NVIDIA H100 80GB HBM3, 81559, 9.0, 535.104.05\n")
    first, second = detect_gpus()
    assert (first.index, first.name, first.memory_gib, first.compute_capability) == (0, "NVIDIA A10G", 22.5, "8.6")
    assert (first.driver_version, first.cuda_version, first.catalog_type) == ("535.104.05", "12.2", "A10G")
    assert (second.index, second.catalog_type, second.memory_gib) == (1, "H100", 79.6)


def test_no_nvidia_smi_means_no_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpus() == ()


def test_unreadable_memory_field_does_not_crash_detection(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "0, NVIDIA A100-SXM4-40GB, [N/A], 8.0, 535.104.05\n")
    (gpu,) = detect_gpus()
    assert gpu.name == "NVIDIA A100-SXM4-40GB" and gpu.catalog_type == "A100"


def test_driver_without_compute_cap_field_still_lists_the_gpu(tmp_path, monkeypatch):
    header = HEADER.replace("535.104.05", "470.82.01").replace("12.2", "11.4")
    fake_nvidia_smi(tmp_path, monkeypatch, "", header=header,
                    query_error='Field "compute_cap" is not a valid field to query.',
                    legacy_output="0, Tesla T4, 15109, 470.82.01\n")
    (gpu,) = detect_gpus()
    assert (gpu.name, gpu.catalog_type, gpu.cuda_version) == ("Tesla T4", "T4", "11.4")


# --- on a GPU -------------------------------------------------------------------------------------------------


@requires_gpu
def test_detected_gpu_is_described():
    gpu = cuda_target().gpu
    assert gpu.name and gpu.memory_gib > 0 and gpu.driver_version
    assert gpu.compute_capability.replace(".", "").isdigit()
    assert gpu.cuda_version != "unknown"


def _ctx(path: Path, target, tmp_path: Path, batch_size: int) -> TuneContext:
    return TuneContext(info=analyze(ModelSpec(path)), target=target, workdir=tmp_path / target.id.replace(":", ""),
                       cache_dir=tmp_path / "cache", budget_s=60, tolerance=0.05, batch_size=batch_size)


def _measure(ctx: TuneContext, candidate: Candidate, tmp_path: Path):
    data = ensure_reference(ctx.info, ctx.batch_size, tmp_path / "data", 120, None)
    (trial,) = run_job(MeasureJob((candidate,), ctx, data, FAST), "search",
                       ExecutionLimits(timeout_s=600, memory_limit_mib=None, log_path=None))
    return trial


@requires_ort_cuda
def test_onnxruntime_cuda_candidate_is_measured(cnn_path, tmp_path):
    from tuners.onnxruntime import OnnxRuntimeTuner

    ctx = _ctx(cnn_path, cuda_target(), tmp_path, batch_size=1)
    (baseline,) = OnnxRuntimeTuner().search(ctx).ask()
    assert baseline.config["provider"] == "CUDAExecutionProvider"
    trial = _measure(ctx, baseline, tmp_path)
    assert trial.status == "ok", trial.reason
    assert "CUDAExecutionProvider" in trial.details["providers"]
    assert trial.max_rel_error < 1e-3


@requires_ort_cuda
def test_speed_up_over_onnxruntime_on_cpu(cnn_path, tmp_path, record_property):
    """Not an assertion about speed (tiny models can be launch-bound): it records the numbers docs/gpu.md asks for."""
    from hwprofiles.targets import detect_targets

    cpu = detect_targets()[0]
    rows = {}
    for batch in (1, 16):
        cpu_trial = _measure(_ctx(cnn_path, cpu, tmp_path, batch), Candidate("onnxruntime", "cpu",
                                                                             stock_config(CPU_PROVIDER)), tmp_path)
        gpu_ctx = _ctx(cnn_path, cuda_target(), tmp_path, batch)
        cuda_trial = _measure(gpu_ctx, Candidate("onnxruntime", gpu_ctx.target.id,
                                                 stock_config("CUDAExecutionProvider")), tmp_path)
        assert cpu_trial.ok and cuda_trial.ok, (cpu_trial.reason, cuda_trial.reason)
        rows[f"b{batch}"] = {"ort_cpu_p50_ms": cpu_trial.latency.p50, "ort_cuda_p50_ms": cuda_trial.latency.p50,
                             "ort_cuda_speedup": cpu_trial.latency.p50 / cuda_trial.latency.p50}
    record_property("gpu_speedup", json.dumps(rows))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "gpu-speedup.json").write_text(json.dumps({"gpu": cuda_target().gpu.to_dict(), "cnn": rows},
                                                           indent=2) + "\n")


@requires_tensorrt
def test_tensorrt_speed_up_over_onnxruntime_on_cpu(cnn_path, tmp_path, record_property):
    from hwprofiles.targets import detect_targets

    cpu_trial = _measure(_ctx(cnn_path, detect_targets()[0], tmp_path, 16),
                         Candidate("onnxruntime", "cpu", stock_config(CPU_PROVIDER)), tmp_path)
    gpu_ctx = _ctx(cnn_path, cuda_target(), tmp_path, 16)
    trt_trial = _measure(gpu_ctx, Candidate("tensorrt", gpu_ctx.target.id, baseline_config(False)), tmp_path)
    assert cpu_trial.ok and trt_trial.ok, (cpu_trial.reason, trt_trial.reason)
    record_property("tensorrt_speedup_b16", cpu_trial.latency.p50 / trt_trial.latency.p50)
