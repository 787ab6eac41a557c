"""`advisor package RUN_DIR --instance NAME`: the artifact of any ranked instance, through the real CLI, on a real
run of the bundled example model; then `advisor verify` of what it built, and every refusal as one exact line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from advisor.cli.package_cmd import default_dest
from cli_helpers import invoke

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "examples" / "tiny_cnn.onnx"
TOO_SMALL = "tiny.mem"  # a catalogue instance whose memory cannot hold the model: excluded from the ranking


def error_line(result) -> str:
    """The whole output of a refused command: exactly one line."""
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    return result.output


def _small_catalog(path: Path) -> Path:
    """One extra instance with 128 MiB of memory, so the run has a real excluded entry to refuse."""
    instance = {"name": TOO_SMALL, "vcpus": 2, "memory_gib": 0.125, "price_per_hour": 0.01,
                "cpu": {"vendor": "amd", "model": "test", "microarchitecture": "znver3", "isa": ["avx2", "fma"],
                        "physical_cores": 1, "smt": True},
                "peak": {"fp32_gflops": 100, "fp16_gflops": 100, "int8_gops": 200, "bandwidth_gbs": 5}}
    path.write_text(yaml.safe_dump({"provider": "other", "defaults": {
        "region": "test", "price_source": "tests", "price_date": "2025-01-01", "spec_source": "tests",
        "spec_date": "2025-01-01"}, "instances": [instance]}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("package")
    out = folder / "run"
    result = invoke("recommend", MODEL, "--slo", "50ms", "--budget", "20s", "--backends", "onnxruntime",
                    "--min-time", "0.1s", "-q", "--out", out, "--cache-dir", folder / "cache",
                    "--catalog", _small_catalog(folder / "small.yaml"))
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text())


def _rows(report: dict, **where) -> list[dict]:
    winner = report["recommendation"]["instance"]
    return [r for r in report["ranking"] if r["instance"] != winner and r["recommendable"]
            and all(r.get(k) == v for k, v in where.items())]


def test_the_winners_manifest_names_its_instance(run):
    out, report = run
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    assert manifest["instance"] == report["recommendation"]["instance"]


def test_package_a_non_winning_instance_then_verify_it(run):
    out, report = run
    row = (_rows(report, source="measured") or _rows(report))[0]
    result = invoke("package", out, "--instance", row["instance"])
    assert result.exit_code == 0, result.output
    dest = out / "artifacts" / row["instance"]
    assert dest == default_dest(out, row["instance"])
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Packaged {row['instance']}: onnxruntime, {row['source']}, trial {row['trial_id']}, ")
    assert lines[1:] == [f"Artifact: {dest}", f"Tarball: {dest}.tar.gz", f"Check it with: advisor verify {dest}"]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["instance"] == row["instance"] != report["recommendation"]["instance"]
    assert manifest["expected"]["instance"] == row["instance"]
    assert manifest["expected"]["trial_id"] == row["trial_id"]
    assert manifest["config"] == row["config"]
    assert manifest["slo"] == report["slo"]
    assert manifest["source_model"]["sha256"] == report["model"]["sha256"]
    verified = invoke("verify", dest)
    assert verified.exit_code == 0, verified.output
    assert "checksums: ok" in verified.output and "outputs: ok" in verified.output
    assert f"on {row['instance']}" in verified.output
    assert invoke("verify", f"{dest}.tar.gz").exit_code == 0


def test_an_estimated_row_packages_the_measured_trial_it_is_anchored_on(run, tmp_path):
    out, report = run
    row = _rows(report, source="estimated")[0]
    dest = tmp_path / "estimated"
    result = invoke("package", out, "--instance", row["instance"], "--out", dest)
    assert result.exit_code == 0, result.output
    label = next(t["label"] for t in report["targets"] if t["id"] == row["target"])
    note = (f"note: {row['instance']}'s latency is a cost-model estimate anchored on trial {row['trial_id']} "
            f"measured on {label}; packaging that trial")
    assert result.stderr.startswith(note) and result.stderr.count("\n") == 1
    manifest = json.loads((dest / "manifest.json").read_text())
    trial = next(t for t in report["trials"] if t["id"] == row["trial_id"])
    assert manifest["instance"] == row["instance"] and manifest["expected"]["source"] == "estimated"
    assert manifest["config"] == trial["config"] and manifest["batch_size"] == trial["batch_size"]
    assert (tmp_path / "estimated.tar.gz").is_file()


def test_unknown_instance(run):
    out, _ = run
    assert error_line(invoke("package", out, "--instance", "c7i.larg")) == (
        f"advisor: error: unknown instance 'c7i.larg': {out / 'report.json'} does not rank it "
        "(did you mean 'c7i.large'?)\n")
    assert error_line(invoke("package", out, "--instance", "zzz")).startswith(
        f"advisor: error: unknown instance 'zzz': {out / 'report.json'} does not rank it (ranked: ")


def test_an_excluded_instance_has_no_candidate(run):
    out, report = run
    reason = next(e["reason"] for e in report["excluded"] if e["instance"] == TOO_SMALL)
    assert reason.startswith("needs ") and reason.endswith("has 0.125 GiB of memory")
    assert error_line(invoke("package", out, "--instance", TOO_SMALL)) == (
        f"advisor: error: instance '{TOO_SMALL}' has no candidate to package: it was not ranked ({reason})\n")


def test_a_not_recommendable_row_has_no_candidate(run):
    out, report = run
    row = next((r for r in report["ranking"] if r["recommendable"] is False), None)
    if row is None:
        pytest.skip("every ranked row is recommendable here (a GPU was measured)")
    assert error_line(invoke("package", out, "--instance", row["instance"])) == (
        f"advisor: error: instance '{row['instance']}' has no candidate to package: no GPU was measured; run advisor "
        "on a GPU host or a --cluster node of this type\n")


def test_missing_or_unfinished_run_folder(tmp_path):
    missing = tmp_path / "nothing-here"
    assert error_line(invoke("package", missing, "--instance", "c7i.large")) == (
        f"advisor: error: run folder not found: {missing}\n")
    assert error_line(invoke("package", tmp_path, "--instance", "c7i.large")) == (
        f"advisor: error: {tmp_path} has no report.json: not a finished advisor recommend run\n")
    (tmp_path / "report.json").write_text("{not json")
    assert error_line(invoke("package", tmp_path, "--instance", "c7i.large")) == (
        f"advisor: error: {tmp_path / 'report.json'} is not valid JSON\n")


def test_another_model_is_refused(run, mlp_path):
    out, report = run
    row = _rows(report)[0]
    assert error_line(invoke("package", out, "--instance", row["instance"], "--model", mlp_path)) == (
        f"advisor: error: {mlp_path} is not the model of this run (its sha256 differs from {out / 'report.json'})\n")


def test_a_moved_model_needs_model(run, tmp_path):
    out, report = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("artifact*", "work", ".lock"))
    data = json.loads((copy / "report.json").read_text())
    data["model"]["path"] = str(tmp_path / "moved.onnx")
    (copy / "report.json").write_text(json.dumps(data))
    row = _rows(report)[0]
    assert error_line(invoke("package", copy, "--instance", row["instance"])) == (
        f"advisor: error: the model '{tmp_path / 'moved.onnx'}' recorded in {copy / 'report.json'} is not found; "
        "pass --model PATH\n")


def test_an_existing_folder_that_is_not_an_artifact_is_never_replaced(run, tmp_path):
    out, report = run
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert error_line(invoke("package", out, "--instance", _rows(report)[0]["instance"], "--out", precious)) == (
        f"advisor: error: --out {precious} exists and is not an advisor artifact; choose another --out\n")
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_run_folder_in_use_is_refused(run):
    out, report = run
    with FileLock(str(out / ".lock")):
        assert error_line(invoke("package", out, "--instance", _rows(report)[0]["instance"])) == (
            f"advisor: error: another advisor run is using {out}; wait for it to finish\n")


def test_default_dest_is_a_safe_folder_name(tmp_path):
    assert default_dest(tmp_path, "c7i.large") == tmp_path / "artifacts" / "c7i.large"
    assert default_dest(tmp_path, "local (Intel Xeon, 2 cores)") == tmp_path / "artifacts" / "local-Intel-Xeon-2-cores"
    assert default_dest(tmp_path, "../..") == tmp_path / "artifacts" / "instance"


def test_verify_refuses_to_pass_without_the_original_model(run, tmp_path):
    """Exit 0 means every check held: an artifact whose outputs could not be compared does not pass."""
    out, report = run
    absent = tmp_path / "absent.onnx"
    assert error_line(invoke("verify", out / "artifact", "--model", absent)) == (
        f"advisor: error: the original model {absent} is not found; pass --model ORIGINAL.onnx to compare the "
        "artifact's outputs with it\n")
