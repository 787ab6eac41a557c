"""`advisor verify` for an llm-serving artifact: prove the files still describe the deployment that was predicted.

Checks, in order, each failing with one line (exit 2, as for any malformed or modified artifact):

1. every file's sha256 matches manifest.json (advisor.runtime.check_artifact), and the manifest lists them all;
2. deployment.json parses (strict schema) and equals the manifest's copy;
3. the deployment is consistent (`LlmDeployment.problems()` is empty: tensor parallel, precision on this GPU, ...);
4. launch.sh execs a command whose flags parse as vLLM's documented `vllm serve` flags (a misspelt flag is caught
   here, with argparse's own message) and which equals `vllm_command(deployment)`: nobody edited one file without
   the other;
5. k8s.yaml parses, its Deployment requests `tensor_parallel` GPUs per pod and runs that same command in the
   image of the deployment's vLLM version;
6. bench.sh parses as `vllm bench serve` and replays the modelled workload (`benchmark_command`).

No server is started. Where vLLM is installed and nvidia-smi finds a GPU, the result says that a live check with
bench.sh is possible here.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from advisor.errors import UserError
from advisor.llm.deployment import DeploymentError, LlmDeployment
from advisor.llm.serving_artifact import (FILES, KIND, PORT, URL_VARIABLE, benchmark_command, bench_num_prompts,
                                          check_flags, script_command, vllm_command)
from advisor.runtime import ArtifactError, check_artifact

EXIT_OK = 0


class ServingArtifactError(UserError, ValueError):
    """The llm-serving artifact is missing, malformed, modified or inconsistent (exit 2); one line."""


@dataclass(frozen=True)
class LlmVerifyResult:
    manifest: dict
    deployment: LlmDeployment
    checks: tuple[str, ...]  # one line per check that held, saying what it checked
    live_check: str  # whether vLLM and a GPU are here to run bench.sh against a live server

    @property
    def exit_code(self) -> int:
        return EXIT_OK  # every failing check raises ServingArtifactError instead

    @property
    def lines(self) -> tuple[str, ...]:
        return (*self.checks, f"live check: {self.live_check}")


def _first_difference(found: list[str], expected: list[str]) -> str:
    for index, (have, want) in enumerate(zip(found, expected)):
        if have != want:
            return f"argument {index + 1} is {have!r}, deployment.json implies {want!r}"
    if len(found) > len(expected):
        return f"extra arguments {' '.join(found[len(expected):])!r}"
    return f"missing arguments {' '.join(expected[len(found):])!r}"


def _check_script(folder: Path, name: str, expected: list[str]) -> None:
    command = script_command((folder / name).read_text(encoding="utf-8"))
    if command is None:
        raise ServingArtifactError(f"{name} has no readable `exec vllm ...` line")
    reason = check_flags(command)
    if reason is not None:
        raise ServingArtifactError(f"{name} does not parse as vLLM's flags: {reason}")
    if command != expected:
        raise ServingArtifactError(f"{name} does not run what deployment.json says "
                                   f"({_first_difference(command, expected)}); regenerate the artifact rather than "
                                   "editing one file")


def _read_deployment(folder: Path, manifest: dict) -> LlmDeployment:
    try:
        recorded = json.loads((folder / "deployment.json").read_text(encoding="utf-8"))
    except ValueError:
        raise ServingArtifactError("deployment.json is not valid JSON") from None
    if recorded != manifest.get("deployment"):
        raise ServingArtifactError("deployment.json differs from the deployment recorded in manifest.json")
    try:
        dep = LlmDeployment.from_dict(recorded)
    except DeploymentError as error:
        raise ServingArtifactError(f"deployment.json: {error}") from None
    problems = dep.problems()
    if problems:
        raise ServingArtifactError("deployment.json describes an inconsistent deployment: " + "; ".join(problems))
    return dep


def _check_k8s(folder: Path, dep: LlmDeployment) -> str:
    try:
        documents = [d for d in yaml.safe_load_all((folder / "k8s.yaml").read_text(encoding="utf-8")) if d]
    except yaml.YAMLError as error:
        raise ServingArtifactError(f"k8s.yaml is not valid YAML ({' '.join(str(error).split())})") from None
    kinds = {d.get("kind"): d for d in documents if isinstance(d, dict)}
    if "Deployment" not in kinds or "Service" not in kinds:
        raise ServingArtifactError("k8s.yaml needs a Deployment and a Service")
    try:
        pod = kinds["Deployment"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    except (KeyError, IndexError, TypeError):
        raise ServingArtifactError("k8s.yaml: the Deployment has no container with an nvidia.com/gpu limit") from None
    if str(gpus) != str(dep.tensor_parallel):
        raise ServingArtifactError(f"k8s.yaml requests {gpus} GPUs per pod; tensor parallel "
                                   f"{dep.tensor_parallel} needs {dep.tensor_parallel}")
    if container.get("command") != vllm_command(dep):
        raise ServingArtifactError("k8s.yaml runs a different command from launch.sh and deployment.json")
    image = f"vllm/vllm-openai:v{dep.engine_version}"
    if container.get("image") != image:
        raise ServingArtifactError(f"k8s.yaml runs image {container.get('image')!r}, not {image!r}")
    return (f"k8s.yaml: a Deployment of {kinds['Deployment']['spec'].get('replicas')} pod(s) of {image}, each "
            f"requesting {gpus} nvidia.com/gpu and running the launch.sh command, and a Service")


def live_check_note(dep: LlmDeployment, vllm_installed: bool, gpu_names: tuple[str, ...]) -> str:
    """Whether bench.sh could check the prediction on this machine (never starts anything)."""
    if not vllm_installed or not gpu_names:
        missing = " and ".join(what for what, absent in (("vLLM is not installed", not vllm_installed),
                                                         ("nvidia-smi finds no GPU", not gpu_names)) if absent)
        return (f"not possible here ({missing}); on a {dep.instance}, run ./launch.sh, then ./bench.sh and compare "
                "with README.md")
    fits = "" if len(gpu_names) >= dep.tensor_parallel else f", fewer than the {dep.tensor_parallel} it needs"
    return (f"possible here (vLLM installed, {len(gpu_names)} GPU(s): {gpu_names[0]}{fits}; the prediction is for "
            f"{dep.gpu_model}): run ./launch.sh, then ./bench.sh http://localhost:{PORT} and compare with README.md")


def _live_check(dep: LlmDeployment) -> str:
    from hwprofiles.targets import detect_gpus

    # find_spec, not import: importing vllm loads torch and CUDA (seconds), and a present package is what matters
    installed = importlib.util.find_spec("vllm") is not None
    return live_check_note(dep, installed, tuple(gpu.name for gpu in detect_gpus()))


def verify_serving_artifact(folder: Path) -> LlmVerifyResult:
    """Check an llm-serving artifact folder (see the module docstring); raises ServingArtifactError (exit 2) at the
    first check that fails."""
    folder = Path(folder)
    try:
        manifest = check_artifact(folder)
    except ArtifactError as error:
        raise ServingArtifactError(str(error)) from None
    if manifest.get("kind") != KIND:
        raise ServingArtifactError(f"{folder} is not an llm-serving artifact (kind {manifest.get('kind')!r})")
    unlisted = [name for name in FILES if name not in manifest.get("files", {})]
    if unlisted:
        raise ServingArtifactError(f"manifest.json does not list {', '.join(unlisted)}")
    dep = _read_deployment(folder, manifest)
    _check_script(folder, "launch.sh", vllm_command(dep))
    k8s = _check_k8s(folder, dep)
    _check_script(folder, "bench.sh", benchmark_command(dep, url=URL_VARIABLE))
    workload = dep.workload
    checks = (
        f"checksums: ok ({len(manifest['files'])} files)",
        f"deployment: {dep.served_model_name} on {dep.instance} ({dep.gpus}x {dep.gpu_model}), tensor parallel "
        f"{dep.tensor_parallel}, {dep.precision}, KV cache {dep.kv_cache_dtype}: consistent, and deployment.json "
        "matches the manifest",
        f"launch.sh: runs the vllm serve command deployment.json implies; its flags parse as vLLM "
        f"{dep.engine_version}'s",
        k8s,
        f"bench.sh: vllm bench serve replays the modelled workload ({bench_num_prompts(dep)} requests at "
        f"{workload['rate_rps']:g} req/s); its flags parse as vLLM {dep.engine_version}'s",
    )
    return LlmVerifyResult(manifest, dep, checks, _live_check(dep))
