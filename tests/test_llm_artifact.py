"""The serving artifact of a generative LLM recommendation and `advisor verify` on it: real files, real scripts
run by bash against a stand-in `vllm` that prints its arguments, and the CLI end to end."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from advisor.checksums import file_sha256
from advisor.llm.deployment import DeploymentError, LlmDeployment
from advisor.llm.serving_artifact import (FILES, benchmark_command, check_flags, kubernetes_manifest, render_files,
                                          script_command, vllm_command, write_serving_artifact)
from advisor.llm.verify_llm import ServingArtifactError, live_check_note, verify_serving_artifact
from cli_helpers import invoke, one_line_error

MODEL = "meta-llama/Llama-3.1-70B-Instruct"

# Llama-3.1-70B in fp8 on half a p5.48xlarge (8x H100): TP 4, two replicas per instance. The predicted figures are
# hand-made (this test checks the artifact, not the performance model).
DEP = LlmDeployment(
    model=MODEL, served_model_name="llama-3.1-70b-instruct", instance="p5.48xlarge", provider="aws",
    gpu_model="H100", gpus=8, tensor_parallel=4, precision="fp8", vllm_quantization="fp8", dtype="bfloat16",
    kv_cache_dtype="fp8", max_model_len=8192, max_num_seqs=64, max_num_batched_tokens=8192,
    gpu_memory_utilization=0.9, enable_chunked_prefill=True,
    workload={"prompt_tokens": 2000, "output_tokens": 300, "rate_rps": 2.5, "arrival": "poisson"},
    slo={"ttft_ms": 800.0, "itl_ms": 60.0, "percentile": "p95"},
    predicted={"ttft_ms": 412.0, "ttft_ms_interval": [350.2, 556.2], "itl_ms": 38.5, "itl_ms_interval": [32.7, 52.0],
               "e2e_ms": 11924.0, "goodput_rps": 5.0, "source": "roofline: prior efficiency for H100 with vLLM"})

SERVE = ["vllm", "serve", MODEL, "--tensor-parallel-size", "4", "--max-model-len", "8192", "--max-num-seqs", "64",
         "--max-num-batched-tokens", "8192", "--gpu-memory-utilization", "0.9", "--quantization", "fp8",
         "--kv-cache-dtype", "fp8", "--dtype", "bfloat16", "--served-model-name", "llama-3.1-70b-instruct",
         "--enable-chunked-prefill", "--port", "8000"]


def bench_line(url: str) -> list[str]:
    # 2.5 req/s x 300 s = 750 requests (over the 500 minimum); Poisson arrivals are gamma shape (burstiness) 1;
    # the ITL target goes to vLLM's goodput as tpot
    return ["vllm", "bench", "serve", "--backend", "openai", "--base-url", url, "--model", "llama-3.1-70b-instruct",
            "--tokenizer", MODEL, "--dataset-name", "random", "--random-input-len", "2000", "--random-output-len",
            "300", "--ignore-eos", "--request-rate", "2.5", "--burstiness", "1", "--num-prompts", "750",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,95,99",
            "--goodput", "ttft:800", "tpot:60", "--seed", "0", "--save-result", "--result-filename",
            "advisor-bench.json"]


@pytest.fixture
def artifact(tmp_path) -> Path:
    return write_serving_artifact(DEP, tmp_path / "artifact")


def resign(folder: Path, names=FILES) -> None:
    """Update the manifest's checksums of `names`, as someone editing an artifact by hand and covering it up would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"].update({name: file_sha256(folder / name) for name in names})
    (folder / "manifest.json").write_text(json.dumps(manifest))


def forge(folder: Path, dep: LlmDeployment) -> None:
    """Rewrite every file consistently from `dep`, bypassing write_serving_artifact's consistency check: the
    artifact is intact and self-consistent, only the deployment itself is wrong."""
    for name, text in render_files(dep).items():
        (folder / name).write_text(text)
    (folder / "deployment.json").write_text(json.dumps(dep.to_dict()))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["deployment"] = dep.to_dict()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    resign(folder)


def fake_vllm(tmp_path: Path) -> dict:
    """An environment whose `vllm` prints one argument per line, so running a script shows what bash passes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text("#!/bin/sh\nprintf '%s\\n' vllm \"$@\"\n")
    (bin_dir / "vllm").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_commands_are_the_documented_vllm_lines():
    assert vllm_command(DEP) == SERVE
    assert benchmark_command(DEP) == bench_line("http://localhost:8000")
    assert check_flags(SERVE) is None and check_flags(bench_line("http://h:8000")) is None
    # bf16 without quantization, chunked prefill off: no --quantization or --kv-cache-dtype; vLLM's chunked prefill
    # is on by default, so off must be said
    plain = replace(DEP, precision="bf16", vllm_quantization=None, kv_cache_dtype="auto", enable_chunked_prefill=False,
                    max_num_batched_tokens=8192)
    command = vllm_command(plain)
    assert "--quantization" not in command and "--kv-cache-dtype" not in command
    assert command[-3:] == ["--no-enable-chunked-prefill", "--port", "8000"] and check_flags(command) is None
    # an end-to-end target joins vLLM's goodput as e2el
    bench = benchmark_command(replace(DEP, slo=DEP.slo | {"e2e_ms": 20000.0}))
    assert bench[bench.index("--goodput"):][:4] == ["--goodput", "ttft:800", "tpot:60", "e2el:20000"]
    assert check_flags(bench) is None


def test_flag_parser_catches_typos_prefixes_and_bad_values():
    typo = [arg.replace("--tensor-parallel-size", "--tensor-paralel-size") for arg in SERVE]
    assert "unrecognized arguments: --tensor-paralel-size 4" in check_flags(typo)
    prefix = [arg.replace("--tensor-parallel-size", "--tensor-parallel") for arg in SERVE]
    assert "unrecognized arguments: --tensor-parallel 4" in check_flags(prefix)  # no abbreviations
    assert "invalid choice: 'fp9'" in check_flags([a.replace("fp8", "fp9") for a in SERVE])
    assert "--gpu-memory-utilization" in check_flags([a.replace("0.9", "1.5") for a in SERVE])
    assert "--goodput" in check_flags([a.replace("tpot:60", "itl:60") for a in bench_line("u")])  # vLLM: no itl goodput
    assert "not vllm serve" in check_flags(["python", "-m", "vllm.entrypoints.openai.api_server"])


def test_artifact_files(artifact, tmp_path):
    assert sorted(p.name for p in artifact.iterdir()) == sorted([*FILES, "manifest.json"])
    assert not (tmp_path / "artifact.partial").exists()
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["schema"] == "advisor.artifact/v1" and manifest["kind"] == "llm-serving"
    assert manifest["instance"] == "p5.48xlarge" and manifest["created_at"]
    assert manifest["files"] == {name: file_sha256(artifact / name) for name in FILES}
    assert manifest["deployment"] == DEP.to_dict() == json.loads((artifact / "deployment.json").read_text())

    launch = (artifact / "launch.sh").read_text()
    assert launch.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in launch
    assert f"\nexec vllm serve {MODEL} \\\n  --tensor-parallel-size 4 \\\n  --max-model-len 8192 \\\n" in launch
    assert script_command(launch) == SERVE
    for name in ("launch.sh", "bench.sh"):
        assert os.stat(artifact / name).st_mode & stat.S_IXUSR, f"{name} is not executable"
    # what bash really passes to vllm, through the script's quoting and line continuations
    env = fake_vllm(tmp_path)
    ran = subprocess.run(["bash", str(artifact / "launch.sh")], capture_output=True, text=True, env=env, timeout=30)
    assert ran.returncode == 0 and ran.stdout.splitlines() == SERVE, ran.stderr
    for args, url in (([], "http://localhost:8000"), (["http://10.0.0.7:8000"], "http://10.0.0.7:8000")):
        ran = subprocess.run(["bash", str(artifact / "bench.sh"), *args], capture_output=True, text=True, env=env,
                             timeout=30)
        assert ran.returncode == 0 and ran.stdout.splitlines() == bench_line(url), ran.stderr

    k8s = (artifact / "k8s.yaml").read_text()
    assert "&id" not in k8s and "*id" not in k8s  # no YAML anchors
    deployment, service = yaml.safe_load_all(k8s)
    assert [deployment, service] == kubernetes_manifest(DEP)
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    assert deployment["spec"]["replicas"] == 2  # 8 GPUs // TP 4
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "vllm/vllm-openai:v0.11.0" and container["command"] == SERVE
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"}
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "vllm-llama-3-1-70b-instruct"
    assert service["spec"]["ports"][0]["port"] == 8000

    readme = (artifact / "README.md").read_text()
    assert "p5.48xlarge (aws) with 8x H100" in readme and "2 replicas fit on one instance" in readme
    assert "| TTFT p95 (ms) | 412 | 350.2 to 556.2 | `P95 TTFT (ms):` |" in readme
    assert "| ITL p95 (ms) | 38.5 | 32.7 to 52 | `P95 ITL (ms):` |" in readme
    assert "| E2EL p95 (ms) | 11924 | not given | `P95 E2EL (ms):` |" in readme
    # 5.0 req/s for the instance is 2.5 for each of its 2 replicas, which is what bench.sh loads
    assert "| 2.5 | not given | `Request goodput (req/s):` |" in readme
    assert "750 requests" in readme and "`advisor bench-serve`" in readme and "roofline: prior" in readme

    with tarfile.open(tmp_path / "artifact.tar.gz") as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert set(members) >= {f"artifact/{name}" for name in [*FILES, "manifest.json"]}
    assert members["artifact/launch.sh"].mode & stat.S_IXUSR


def test_round_trip_and_strict_parsing():
    assert LlmDeployment.from_dict(json.loads(json.dumps(DEP.to_dict()))) == DEP
    data = DEP.to_dict()
    with pytest.raises(DeploymentError, match="deployment field tensor_parallel: Input should be a valid integer"):
        LlmDeployment.from_dict(data | {"tensor_parallel": "4"})
    with pytest.raises(DeploymentError, match="deployment field gpu_model: Field required"):
        LlmDeployment.from_dict({k: v for k, v in data.items() if k != "gpu_model"})
    with pytest.raises(DeploymentError, match="deployment field replicas: Extra inputs are not permitted"):
        LlmDeployment.from_dict(data | {"replicas": 2})


@pytest.mark.parametrize("change, problem", [
    ({"tensor_parallel": 3}, "tensor_parallel 3 is not a power of two"),
    ({"gpus": 4, "tensor_parallel": 8}, "tensor_parallel 8 does not divide the instance's 4 GPUs"),
    ({"gpu_model": "A100", "instance": "p4d.24xlarge"},
     "fp8 needs FP8 tensor cores (compute capability >= 8.9); A100 has 8.0"),
    ({"gpu_memory_utilization": 1.2}, "gpu_memory_utilization 1.2 is outside (0, 1]"),
    ({"max_num_batched_tokens": 32}, "max_num_batched_tokens 32 < max_num_seqs 64"),
    ({"enable_chunked_prefill": False, "max_num_batched_tokens": 4096},
     "without chunked prefill max_num_batched_tokens 4096 must be at least max_model_len 8192"),
    ({"precision": "bf16", "vllm_quantization": None, "kv_cache_dtype": "auto", "gpu_model": "T4"},
     "bf16 needs compute capability >= 8.0; T4 has 7.5"),
    ({"precision": "bf16"}, "precision bf16 runs the checkpoint unquantized, but vllm_quantization is 'fp8'"),
    ({"max_model_len": 2048}, "the modelled request (2000 prompt + 300 output tokens) exceeds max_model_len 2048"),
    ({"slo": {"percentile": "p95"}}, "slo needs ttft_ms and/or itl_ms"),
])
def test_problems(change, problem):
    assert DEP.problems() == []
    found = replace(DEP, **change).problems()
    assert len(found) == 1 and found[0].startswith(problem), found


def test_write_refuses_an_inconsistent_deployment(tmp_path):
    with pytest.raises(DeploymentError, match="inconsistent deployment: tensor_parallel 3 is not a power of two"):
        write_serving_artifact(replace(DEP, tensor_parallel=3), tmp_path / "artifact")
    assert list(tmp_path.iterdir()) == []


def test_rewriting_replaces_the_artifact(artifact):
    again = write_serving_artifact(replace(DEP, max_num_seqs=32), artifact)
    assert again == artifact and "--max-num-seqs 32" in (artifact / "launch.sh").read_text()
    assert verify_serving_artifact(artifact).deployment.max_num_seqs == 32


def test_verify_passes(artifact):
    result = verify_serving_artifact(artifact)
    assert result.exit_code == 0 and result.deployment == DEP
    assert result.lines[0] == "checksums: ok (5 files)"
    assert result.lines[2] == "launch.sh: runs the vllm serve command deployment.json implies; its flags parse as " \
                              "vLLM 0.11.0's"
    assert "requesting 4 nvidia.com/gpu" in result.lines[3]
    assert "750 requests at 2.5 req/s" in result.lines[4]
    assert result.lines[-1].startswith("live check: ")


def test_live_check_note():
    absent = live_check_note(DEP, vllm_installed=False, gpu_names=())
    assert absent.startswith("not possible here (vLLM is not installed and nvidia-smi finds no GPU)")
    assert live_check_note(DEP, True, ()).startswith("not possible here (nvidia-smi finds no GPU)")
    here = live_check_note(DEP, True, ("NVIDIA H100 80GB HBM3",) * 2)
    assert here.startswith("possible here") and "fewer than the 4 it needs" in here and "./bench.sh" in here


def test_cli_verify_passes_on_folder_and_tarball(artifact, tmp_path):
    for path in (artifact, tmp_path / "artifact.tar.gz"):
        result = invoke("verify", path)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == "checksums: ok (5 files)" and lines[1].startswith("deployment: llama-3.1-70b-instruct on "
                                                                             "p5.48xlarge (8x H100)")
        assert [line.split(":")[0] for line in lines] == ["checksums", "deployment", "launch.sh", "k8s.yaml",
                                                          "bench.sh", "live check"]


def edit(folder: Path, name: str, old: str, new: str) -> None:
    text = (folder / name).read_text()
    assert old in text
    (folder / name).write_text(text.replace(old, new))


@pytest.mark.parametrize("damage, message", [
    (lambda f: edit(f, "k8s.yaml", "replicas: 2", "replicas: 3"),
     "artifact file k8s.yaml was modified (sha256 mismatch)"),
    (lambda f: (edit(f, "launch.sh", "--max-num-seqs 64", "--max-num-seqs 128"), resign(f)),
     # vllm, serve, MODEL, then 3 flag pairs: 64 is the 9th argument
     "launch.sh does not run what deployment.json says (argument 9 is '128', deployment.json implies '64')"),
    (lambda f: (edit(f, "launch.sh", "--tensor-parallel-size", "--tensor-paralel-size"), resign(f)),
     "launch.sh does not parse as vLLM's flags: vllm serve: unrecognized arguments: --tensor-paralel-size 4"),
    (lambda f: (edit(f, "k8s.yaml", "nvidia.com/gpu: 4", "nvidia.com/gpu: 2"), resign(f)),
     "k8s.yaml requests 2 GPUs per pod; tensor parallel 4 needs 4"),
    (lambda f: (edit(f, "deployment.json", '"max_num_seqs": 64', '"max_num_seqs": 65'), resign(f)),
     "deployment.json differs from the deployment recorded in manifest.json"),
    (lambda f: forge(f, replace(DEP, tensor_parallel=3)),
     "deployment.json describes an inconsistent deployment: tensor_parallel 3 is not a power of two"),
    (lambda f: forge(f, replace(DEP, gpu_model="A100", instance="p4d.24xlarge")),
     "deployment.json describes an inconsistent deployment: fp8 needs FP8 tensor cores (compute capability >= 8.9); "
     "A100 has 8.0"),
    (lambda f: (f / "bench.sh").unlink(), "artifact file bench.sh is missing"),
])
def test_cli_verify_fails_with_one_line(artifact, damage, message):
    damage(artifact)
    with pytest.raises(ServingArtifactError, match="^" + re.escape(message)):
        verify_serving_artifact(artifact)
    result = invoke("verify", artifact)
    assert result.exit_code == 2
    assert one_line_error(result).startswith(f"advisor: error: {message}")
