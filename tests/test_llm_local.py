"""`advisor recommend` on a generative folder with weights: its CPU candidates are built with ONNX Runtime GenAI,
checked against transformers and measured here; a CPU recommendation ships that engine, `advisor verify` checks
it. The catalogue is this machine's CPU (same microarchitecture and vCPUs, so the row is 'measured here') listing
no bf16/x86 ISA, which leaves exactly the precisions ONNX Runtime GenAI serves (fp32, int4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_helpers import invoke, one_line_error

pytest_plugins = ["llm_models"]

ROOT = Path(__file__).resolve().parents[1]
REGION = "test-local"
ARGS = ("--ttft", "1s", "--itl", "200ms", "--prompt-tokens", "64", "--output-tokens", "16", "--provider", "aws",
        "--region", REGION)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    from hwprofiles.targets import detect_cpu

    cpu = detect_cpu()
    data = yaml.safe_load((ROOT / "hwprofiles" / "catalog" / "aws.yaml").read_text())
    template = next(i for i in data["instances"] if i.get("gpu") is None)
    here = dict(template, name="this-cpu", region=REGION, vcpus=cpu.logical_cores,
                cpu=dict(template["cpu"], microarchitecture=cpu.microarchitecture, isa=["neon"]))
    path = tmp_path_factory.mktemp("catalog") / "this-cpu.yaml"
    path.write_text(yaml.safe_dump({"provider": "aws", "defaults": data.get("defaults", {}), "instances": [here]}))
    return path


@pytest.fixture(scope="module")
def run(tiny_llama, catalog, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("local") / "run"
    result = invoke("recommend", str(tiny_llama), *ARGS, "--catalog", str(catalog), "--out", str(out))
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()), out


def test_candidates_are_built_checked_and_measured_here(run):
    report, _ = run
    local = report["local_measurements"]
    assert local["skipped_because"] is None
    by_precision = {c["precision"]: c for c in local["candidates"]}
    assert set(by_precision) == {"fp32", "int4-wo"}
    for candidate in by_precision.values():
        assert candidate["status"] == "ok", candidate["reason"]
        assert candidate["reference_check"]["passed"]
        assert 0 < candidate["ttft_ms"]["p50"] and 0 < candidate["itl_ms"]["p50"]
        assert candidate["peak_memory_mib"] > 0 and candidate["steps"]
        assert candidate["measurement_id"] in report["measurements_loaded"]


def test_the_cpu_recommendation_ships_the_measured_engine(run):
    report, out = run
    rec = report["recommendation"]
    assert rec["instance"] == "this-cpu" and rec["engine"] == "onnxruntime-genai"
    assert rec["measured_here"]["load"].startswith("one sequence")
    manifest = json.loads((Path(rec["artifact"]) / "manifest.json").read_text())
    assert manifest["kind"] == "llm-engine" and manifest["precision"] == rec["precision"]
    assert manifest["reference_check"]["passed"]
    page = (out / "report.html").read_text()
    assert "Measured on this machine" in page and "Measured here:" in (out / "summary.md").read_text()


def test_verify_checks_the_engine_against_the_original_weights(run, tiny_llama_other_weights):
    report, _ = run
    artifact = report["recommendation"]["artifact"]
    result = invoke("verify", artifact)
    assert result.exit_code == 0, result.output
    assert "outputs: ok against transformers" in result.output and "latency here" in result.output
    other = invoke("verify", artifact, "--model", str(tiny_llama_other_weights))
    assert other.exit_code == 4 and "outputs: DIFFER" in other.output
    gone = invoke("verify", artifact, "--model", str(Path(artifact) / "no-such-folder"))
    assert gone.exit_code == 2 and "is not found; pass --model HF_FOLDER" in one_line_error(gone)


def test_no_measure_plans_from_the_architecture_only(tiny_llama, catalog, tmp_path):
    result = invoke("recommend", str(tiny_llama), *ARGS, "--catalog", str(catalog), "--out", str(tmp_path / "r"),
                    "--no-measure", "--no-artifact")
    assert result.exit_code in (0, 3), result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["local_measurements"] == {"engine": "onnxruntime-genai", "skipped_because": "--no-measure",
                                            "candidates": []}


def test_measure_without_weights_and_bad_measurement_files_are_one_line(catalog, tmp_path):
    config_only = ROOT / "examples" / "llm" / "llama-3.2-1b"
    result = invoke("recommend", str(config_only), *ARGS, "--catalog", str(catalog), "--out", str(tmp_path / "a"),
                    "--measure")
    assert result.exit_code == 2 and "--measure:" in one_line_error(result) and "no weights" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = invoke("recommend", str(config_only), *ARGS, "--catalog", str(catalog), "--out", str(tmp_path / "b"),
                    "--measurements", str(bad))
    assert result.exit_code == 2 and "bad.json" in one_line_error(result)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
