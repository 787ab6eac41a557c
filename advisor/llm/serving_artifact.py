"""The deployable artifact of a generative LLM recommendation: the vLLM command, a Kubernetes manifest, the
benchmark that checks the prediction in production, and a manifest with checksums, packed like the ONNX artifact
(written as DEST.partial/, renamed to DEST, then DEST.tar.gz).

Flag names are those of vLLM 0.11 (the LlmDeployment's engine_version), checked against vLLM's documentation:

- `vllm serve MODEL` with --tensor-parallel-size, --max-model-len, --max-num-seqs, --max-num-batched-tokens,
  --gpu-memory-utilization, --quantization, --kv-cache-dtype, --dtype, --served-model-name, --port: "Engine
  Arguments", https://docs.vllm.ai/en/latest/configuration/engine_args/ (read 2026-12-06). --enable-chunked-prefill
  is a boolean-optional flag since the V1 engine ("--enable-chunked-prefill, --no-enable-chunked-prefill", default
  None, on for generative models), so a deployment without chunked prefill says --no-enable-chunked-prefill
  rather than leaving the flag out.
- `vllm bench serve` with --backend openai, --base-url, --model, --tokenizer, --dataset-name random,
  --random-input-len, --random-output-len, --request-rate, --burstiness, --num-prompts, --ignore-eos,
  --percentile-metrics, --metric-percentiles, --goodput, --save-result, --result-filename, --seed: "vllm bench
  serve", https://docs.vllm.ai/en/v0.11.2/cli/bench/serve/ and vllm/benchmarks/serve.py (read 2026-12-06).
  --ignore-eos is passed because random prompts can end early on EOS, which would shorten the modelled outputs
  (later vLLM releases default to it for random datasets; passing it is harmless there).
- The Kubernetes Deployment follows vLLM's "Using Kubernetes" guide (https://docs.vllm.ai/en/stable/deployment/k8s/,
  read 2026-12-06): image vllm/vllm-openai, `nvidia.com/gpu` limits, /dev/shm as a memory-backed emptyDir (NCCL
  moves tensor-parallel traffic through shared memory; a container's default 64 MiB is too small), /health probes.

The parsers `vllm_serve_parser()` and `vllm_bench_parser()` declare those documented flags a second time, on
purpose: they are how `advisor verify` catches a misspelt flag in the command builders or in an edited file.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
from pathlib import Path

import yaml

from advisor.artifact import publish_artifact
from advisor.checksums import file_sha256
from advisor.environment import now_iso
from advisor.llm.deployment import DeploymentError, LlmDeployment, mean_tokens
from advisor.runfolder import write_atomic, write_json_atomic

SCHEMA = "advisor.artifact/v1"
KIND = "llm-serving"
MANIFEST = "manifest.json"
FILES = ("launch.sh", "k8s.yaml", "bench.sh", "deployment.json", "README.md")
PORT = 8000
URL_VARIABLE = "$URL"  # bench.sh takes the endpoint as its first argument
SHM_SIZE = "2Gi"  # vLLM's Kubernetes guide uses a 2Gi memory emptyDir for /dev/shm
BENCH_SECONDS = 300.0  # replay five minutes of arrivals: the steady state outweighs the ramp-up
BENCH_MIN_PROMPTS = 500  # a p99 rests on at least five requests beyond it
BENCH_PERCENTILES = "50,90,95,99"
RESULT_FILE = "advisor-bench.json"
# vLLM's request gaps are gamma distributed with shape `burstiness`: 1 is Poisson; constant arrivals are
# approximated by shape 1000 (coefficient of variation 1/sqrt(1000), about 3%)
BURSTINESS = {"poisson": 1.0, "constant": 1000.0}


def vllm_command(dep: LlmDeployment) -> list[str]:
    """The `vllm serve` command line that starts this deployment (flag names: see the module docstring)."""
    command = ["vllm", "serve", dep.model,
               "--tensor-parallel-size", str(dep.tensor_parallel),
               "--max-model-len", str(dep.max_model_len),
               "--max-num-seqs", str(dep.max_num_seqs),
               "--max-num-batched-tokens", str(dep.max_num_batched_tokens),
               "--gpu-memory-utilization", str(float(dep.gpu_memory_utilization))]
    if dep.vllm_quantization is not None:
        command += ["--quantization", dep.vllm_quantization]
    if dep.kv_cache_dtype == "fp8":
        command += ["--kv-cache-dtype", "fp8"]
    command += ["--dtype", dep.dtype, "--served-model-name", dep.served_model_name]
    command.append("--enable-chunked-prefill" if dep.enable_chunked_prefill else "--no-enable-chunked-prefill")
    return command + ["--port", str(PORT)]


def bench_num_prompts(dep: LlmDeployment) -> int:
    """Requests the benchmark sends: BENCH_SECONDS of arrivals at the modelled rate, at least BENCH_MIN_PROMPTS."""
    return max(BENCH_MIN_PROMPTS, math.ceil(float(dep.workload["rate_rps"]) * BENCH_SECONDS))


def benchmark_command(dep: LlmDeployment, url: str = f"http://localhost:{PORT}") -> list[str]:
    """vLLM's own `vllm bench serve`, replaying the modelled workload of one replica against the endpoint at `url`:
    fixed prompt and output lengths (the modelled means), the modelled rate and arrival process, percentiles of
    TTFT, TPOT, ITL and end-to-end latency, and goodput under the SLOs (vLLM's goodput knows ttft, tpot and e2el;
    the ITL target is given as tpot, a request's mean gap). `advisor bench-serve` (planned, issue 14) will run the
    same replay and compare the results with the prediction itself."""
    arrival = dep.workload.get("arrival", "poisson")
    command = ["vllm", "bench", "serve", "--backend", "openai", "--base-url", url,
               "--model", dep.served_model_name, "--tokenizer", dep.model,
               "--dataset-name", "random",
               "--random-input-len", str(mean_tokens(dep.workload["prompt_tokens"])),
               "--random-output-len", str(mean_tokens(dep.workload["output_tokens"])),
               "--ignore-eos",
               "--request-rate", _number(dep.workload["rate_rps"]),
               "--burstiness", _number(BURSTINESS[arrival]),
               "--num-prompts", str(bench_num_prompts(dep)),
               "--percentile-metrics", "ttft,tpot,itl,e2el",
               "--metric-percentiles", BENCH_PERCENTILES]
    goodput = [f"{key}:{_number(dep.slo[name])}"
               for key, name in (("ttft", "ttft_ms"), ("tpot", "itl_ms"), ("e2el", "e2e_ms"))
               if dep.slo.get(name) is not None]
    if goodput:
        command += ["--goodput", *goodput]
    return command + ["--seed", "0", "--save-result", "--result-filename", RESULT_FILE]


def _number(value: float) -> str:
    """A number as vLLM's argparse reads it back exactly: integers without a trailing .0."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def k8s_name(dep: LlmDeployment) -> str:
    """A DNS-1123 name for the Deployment and Service, from the served model name."""
    slug = re.sub(r"[^a-z0-9]+", "-", dep.served_model_name.lower()).strip("-")
    return ("vllm-" + slug)[:63].rstrip("-")


def kubernetes_manifest(dep: LlmDeployment) -> list[dict]:
    """A Deployment (one pod per engine replica that fits the instance, each with `tensor_parallel` GPUs on nodes of
    the recommended instance type) and a ClusterIP Service on port 8000."""
    name = k8s_name(dep)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "advisor"}
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10}
    container = {
        "name": "vllm",
        "image": f"vllm/vllm-openai:v{dep.engine_version}",
        "command": vllm_command(dep),
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token",
                                                                    "optional": True}}}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": {"limits": {"nvidia.com/gpu": dep.tensor_parallel},
                      "requests": {"nvidia.com/gpu": dep.tensor_parallel}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        # loading a 70B checkpoint takes minutes: up to 30 min before the readiness probe takes over
        "startupProbe": probe | {"failureThreshold": 180},
        "readinessProbe": probe | {"failureThreshold": 3},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"advisor/instance": dep.instance, "advisor/gpu-model": dep.gpu_model,
                                     "advisor/provider": dep.provider}},
        "spec": {
            "replicas": dep.replicas_per_instance,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # the instance type fixes the GPU type and count the prediction was made for; the label is a
                    # Kubernetes well-known label every cloud sets on its nodes
                    "nodeSelector": {"node.kubernetes.io/instance-type": dep.instance},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [container],
                    "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": name},
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }
    return [deployment, service]


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, and takes no abbreviations (a misspelt flag
    must not pass as a prefix of a real one)."""

    def __init__(self, prog: str):
        super().__init__(prog=prog, add_help=False, allow_abbrev=False)

    def error(self, message: str):
        raise _ParseError(message)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError(text)
    return value


def _csv_of(allowed: set[str]):
    def parse(text: str) -> str:
        if not text or not set(text.split(",")) <= allowed:
            raise ValueError(text)
        return text
    parse.__name__ = "comma-separated list of " + "/".join(sorted(allowed))
    return parse


def _percentiles(text: str) -> str:
    if not all(0 < float(p) < 100 for p in text.split(",")):
        raise ValueError(text)
    return text


def _goodput(text: str) -> str:
    key, _, value = text.partition(":")
    if key not in ("ttft", "tpot", "e2el") or float(value) <= 0:
        raise ValueError(text)
    return text


# vLLM 0.11 --quantization methods an advisor precision maps to (vllm/model_executor/layers/quantization/
# __init__.py, QuantizationMethods); the full list is longer and changes between releases
QUANTIZATION_METHODS = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "fbgemm_fp8", "modelopt",
                        "compressed-tensors", "bitsandbytes", "experts_int8", "gguf")


def vllm_serve_parser() -> argparse.ArgumentParser:
    """The `vllm serve` flags this artifact uses, as documented for vLLM 0.11 (see the module docstring)."""
    parser = _Parser("vllm serve")
    parser.add_argument("model_tag")
    parser.add_argument("--tensor-parallel-size", "-tp", type=_positive_int)
    parser.add_argument("--max-model-len", type=_positive_int)
    parser.add_argument("--max-num-seqs", type=_positive_int)
    parser.add_argument("--max-num-batched-tokens", type=_positive_int)
    parser.add_argument("--gpu-memory-utilization", type=_fraction)
    parser.add_argument("--quantization", "-q", choices=QUANTIZATION_METHODS)
    parser.add_argument("--kv-cache-dtype", choices=("auto", "fp8", "fp8_e4m3", "fp8_e5m2"))
    parser.add_argument("--dtype", choices=("auto", "half", "float16", "bfloat16", "float", "float32"))
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction)
    parser.add_argument("--port", type=_positive_int)
    return parser


def vllm_bench_parser() -> argparse.ArgumentParser:
    """The `vllm bench serve` flags this artifact uses, as documented for vLLM 0.11 (see the module docstring)."""
    parser = _Parser("vllm bench serve")
    parser.add_argument("--backend", choices=("vllm", "openai", "openai-chat"))
    parser.add_argument("--base-url")
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokenizer")
    parser.add_argument("--dataset-name", choices=("sharegpt", "burstgpt", "sonnet", "random", "hf", "custom"))
    parser.add_argument("--random-input-len", type=_positive_int)
    parser.add_argument("--random-output-len", type=_positive_int)
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--request-rate", type=float)
    parser.add_argument("--burstiness", type=float)
    parser.add_argument("--num-prompts", type=_positive_int)
    parser.add_argument("--percentile-metrics", type=_csv_of({"ttft", "tpot", "itl", "e2el"}))
    parser.add_argument("--metric-percentiles", type=_percentiles)
    parser.add_argument("--goodput", nargs="+", type=_goodput)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-result", action="store_true")
    parser.add_argument("--result-filename")
    return parser


def check_flags(command: list[str]) -> str | None:
    """Why `command` (a `vllm serve` or `vllm bench serve` line) would not parse as vLLM's flags; None when it
    does."""
    if command[:2] == ["vllm", "serve"]:
        parser, args = vllm_serve_parser(), command[2:]
    elif command[:3] == ["vllm", "bench", "serve"]:
        parser, args = vllm_bench_parser(), command[3:]
    else:
        return f"it runs {shlex.join(command[:3])!r}, not vllm serve or vllm bench serve"
    try:
        parser.parse_args(args)
    except _ParseError as error:
        return f"{parser.prog}: {error}"
    return None


def _script(lines: list[str], command: list[str], variable: str | None = None) -> str:
    """A bash script that ends by exec-ing `command`, one flag and its values per line; `variable` is written
    unquoted-for-expansion ("$URL") instead of shell-quoted."""
    def quote(arg: str) -> str:
        return f'"{arg}"' if arg == variable else shlex.quote(arg)

    first = next((i for i, arg in enumerate(command) if arg.startswith("--")), len(command))
    parts, current = [" ".join(quote(a) for a in command[:first])], []
    for arg in command[first:]:
        if arg.startswith("--") and current:
            parts.append(" ".join(current))
            current = []
        current.append(quote(arg))
    if current:
        parts.append(" ".join(current))
    return "\n".join(["#!/usr/bin/env bash", "set -euo pipefail", *lines, "exec " + " \\\n  ".join(parts)]) + "\n"


def script_command(text: str) -> list[str] | None:
    """The command a launch.sh or bench.sh execs (line continuations joined, shell quoting undone); None when the
    script has no `exec` line."""
    for line in text.replace("\\\n", " ").splitlines():
        if line.strip().startswith("exec "):
            try:
                return shlex.split(line)[1:]
            except ValueError:
                return None
    return None


class _PlainDumper(yaml.SafeDumper):
    """Writes shared objects (the labels, the probe) out in full: no &id001 anchors in a file people edit."""

    def ignore_aliases(self, data) -> bool:
        return True


def render_files(dep: LlmDeployment) -> dict[str, str]:
    """The artifact's files and their text, from the deployment alone (no consistency check: see
    write_serving_artifact)."""
    title = " ".join(f"{dep.served_model_name} on {dep.instance}".split())  # a comment stays one line
    header = [f"# {title}: generated by advisor from deployment.json.",
              "# `advisor verify` checks that this command and deployment.json still agree."]
    launch = _script(header + [f"# Serves http://0.0.0.0:{PORT}/v1 (OpenAI API); /health answers when ready."],
                     vllm_command(dep))
    bench = _script(["# Replays the modelled workload of one replica against a running endpoint:",
                     f"#   ./bench.sh [URL]   (default http://localhost:{PORT}); results in {RESULT_FILE}",
                     f'URL="${{1:-http://localhost:{PORT}}}"'],
                    benchmark_command(dep, url=URL_VARIABLE), variable=URL_VARIABLE)
    return {
        "launch.sh": launch,
        "k8s.yaml": yaml.dump_all(kubernetes_manifest(dep), Dumper=_PlainDumper, sort_keys=False, width=1000),
        "bench.sh": bench,
        "README.md": render_readme(dep),
    }


_FIGURES = (("ttft_ms", "TTFT", "ms"), ("itl_ms", "ITL", "ms"), ("tpot_ms", "TPOT", "ms"), ("e2e_ms", "E2EL", "ms"))


def _value_and_interval(predicted: dict, key: str) -> tuple[float | None, list | None]:
    """A predicted figure and its interval, from {"key": v, "key_interval": [lo, hi]} or {"key": {"value": v,
    "interval": [lo, hi]}}."""
    value = predicted.get(key)
    if isinstance(value, dict):
        return value.get("value"), value.get("interval")
    return value, predicted.get(f"{key}_interval")


def _fmt(value) -> str:
    """Four significant digits, but whole numbers from 1000 up (11924 ms, not 1.192e+04)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def render_readme(dep: LlmDeployment) -> str:
    """README.md: what was predicted (with intervals) on which instance, how to launch, and how to check the
    prediction with bench.sh: which of its output lines to compare with which predicted figure."""
    pct = dep.slo.get("percentile", "p99")
    number = pct.lstrip("p")
    workload, slo, predicted = dep.workload, dep.slo, dep.predicted
    replicas = dep.replicas_per_instance
    quantization = dep.vllm_quantization or "none (the checkpoint's dtype)"
    targets = ", ".join(f"{label} <= {_fmt(slo[key])} ms"
                        for key, label in (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "end-to-end"))
                        if slo.get(key) is not None)
    rows = []
    for key, label, unit in _FIGURES:
        value, interval = _value_and_interval(predicted, key)
        if value is not None:
            band = f"{_fmt(interval[0])} to {_fmt(interval[1])}" if interval else "not given"
            rows.append(f"| {label} {pct} ({unit}) | {_fmt(value)} | {band} | `P{number} {label} ({unit}):` |")
    goodput, interval = _value_and_interval(predicted, "goodput_rps")
    if goodput is not None:
        share = goodput / replicas
        band = f"{_fmt(interval[0] / replicas)} to {_fmt(interval[1] / replicas)}" if interval else "not given"
        rows.append(f"| goodput of one replica (req/s; {_fmt(goodput)} for the instance's {replicas}) | "
                    f"{_fmt(share)} | {band} | `Request goodput (req/s):` |")
    source = predicted.get("source") or predicted.get("rests_on") or "not recorded"
    # a hub id is ORG/NAME; anything else (./x, /data/x, x) is a folder, as is an ORG/NAME folder that exists here
    local_model = not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", dep.model) or Path(dep.model).exists()
    lines = [
        f"# {dep.served_model_name} with vLLM {dep.engine_version} on {dep.instance}",
        "",
        f"Recommended by advisor: {dep.instance} ({dep.provider}) with {dep.gpus}x {dep.gpu_model}. Each vLLM engine "
        f"replica uses {dep.tensor_parallel} of them (tensor parallel {dep.tensor_parallel}); {replicas} "
        f"replica{'s' if replicas > 1 else ''} fit{'' if replicas > 1 else 's'} on one instance.",
        "",
        f"Engine settings: precision {dep.precision} (vLLM --quantization {quantization}, --dtype {dep.dtype}, KV "
        f"cache {dep.kv_cache_dtype}), max_model_len {dep.max_model_len}, max_num_seqs {dep.max_num_seqs}, "
        f"max_num_batched_tokens {dep.max_num_batched_tokens}, gpu_memory_utilization "
        f"{dep.gpu_memory_utilization:g}, chunked prefill {'on' if dep.enable_chunked_prefill else 'off'}.",
        "",
        "## What was predicted",
        "",
        f"Workload of one replica: {mean_tokens(workload.get('prompt_tokens'))} prompt tokens and "
        f"{mean_tokens(workload.get('output_tokens'))} output tokens per request (means), "
        f"{_fmt(workload.get('rate_rps'))} requests/s, {workload.get('arrival', 'poisson')} arrivals.",
        f"Latency targets at {pct}: {targets or 'none'}.",
        "",
        "| figure | predicted | interval | bench.sh output line to compare |",
        "|---|---|---|---|",
        *rows,
        "",
        f"The figures rest on: {source}.",
        "",
        "## Launch",
        "",
        f"- On one {dep.instance}: `./launch.sh` (needs `pip install vllm=={dep.engine_version}`; serves the OpenAI "
        f"API on port {PORT}, `/health` answers once the model is loaded).",
        f"- On Kubernetes: `kubectl apply -f k8s.yaml`: {replicas} pod{'s' if replicas > 1 else ''} of "
        f"{dep.tensor_parallel} GPU{'s' if dep.tensor_parallel > 1 else ''} on nodes labelled "
        f"`node.kubernetes.io/instance-type={dep.instance}`, image `vllm/vllm-openai:v{dep.engine_version}`, a "
        "Service on port 8000. Gated models read a Hugging Face token from the secret `hf-token` (key `token`).",
    ]
    if local_model:
        lines.append(f"- The model is the local folder `{dep.model}`: it must exist at that path where vLLM runs "
                     "(on Kubernetes, mount it there, e.g. from a PersistentVolumeClaim) and where bench.sh runs "
                     "(it reads the tokenizer from there).")
    lines += [
        "",
        "## Check the prediction",
        "",
        f"With the server up, run `./bench.sh http://HOST:{PORT}` (on Kubernetes, `kubectl port-forward "
        f"deployment/{k8s_name(dep)} {PORT}:{PORT}` reaches one pod; then `./bench.sh`). It runs vLLM's own "
        f"`vllm bench serve`: {bench_num_prompts(dep)} requests of random tokens with the modelled lengths, at the "
        f"modelled rate of one replica, and prints percentiles {BENCH_PERCENTILES} of TTFT, TPOT, ITL and end-to-end "
        f"latency (also saved in {RESULT_FILE}).",
        "",
        f"The prediction holds where each measured `P{number}` figure lies within its interval in the table above, "
        "and the measured request goodput is at least the predicted one for a replica. vLLM counts a request as "
        "good when its TTFT and its TPOT (the mean gap between its tokens) meet the targets, so its goodput can "
        f"exceed one that holds every gap to the ITL target: compare `P{number} ITL (ms):` as well.",
        "",
        "`advisor bench-serve` (planned, issue 14) will run this replay and the comparison itself.",
        "",
        "## Files",
        "",
        "`launch.sh` (the vLLM command), `k8s.yaml`, `bench.sh`, `deployment.json` (everything above, as data) and "
        "`manifest.json` (sha256 of every file). `advisor verify` checks the checksums, that the deployment is "
        "consistent, and that launch.sh, k8s.yaml and bench.sh still run what deployment.json says.",
    ]
    return "\n".join(lines) + "\n"


def write_serving_artifact(dep: LlmDeployment, dest: Path) -> Path:
    """Write the artifact folder DEST (launch.sh, k8s.yaml, bench.sh, deployment.json, README.md, manifest.json) and
    DEST.tar.gz. Refuses (DeploymentError) a deployment whose problems() is not empty.

    Everything is written into DEST.partial/ and renamed to DEST at the end, so DEST is only ever a whole
    artifact; the tarball is written as DEST.tar.gz.partial and renamed after it."""
    problems = dep.problems()
    if problems:
        raise DeploymentError("cannot write a serving artifact for an inconsistent deployment: " + "; ".join(problems))
    final = Path(dest)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    for name, text in render_files(dep).items():
        write_atomic(partial / name, text)
    write_json_atomic(partial / "deployment.json", dep.to_dict())
    write_json_atomic(partial / MANIFEST, {
        "schema": SCHEMA,
        "kind": KIND,
        "created_at": now_iso(),
        "instance": dep.instance,
        "files": {name: file_sha256(partial / name) for name in FILES},
        "deployment": dep.to_dict(),
    })
    for name in (*FILES, MANIFEST):  # write_atomic creates 0600 files; the scripts run, the rest is read
        os.chmod(partial / name, 0o755 if name.endswith(".sh") else 0o644)
    return publish_artifact(partial, final)
