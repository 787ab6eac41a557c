"""The deployable generative artifact end to end over real HTTP on 127.0.0.1: `python -m advisor.runtime ARTIFACT
--serve` (ONNX Runtime GenAI on the tiny llama) answered by `advisor bench-serve`, whose TTFT is checked against the
engine's own TTFT measured in another process (advisor.llm.measure_local)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytest_plugins = ["llm_models"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifact(tiny_llama_fp32, tmp_path_factory) -> Path:
    from advisor.llm.engine_artifact import write_engine_artifact

    return write_engine_artifact(tiny_llama_fp32, tmp_path_factory.mktemp("serve") / "artifact",
                                 served_model_name="tiny-llama")


@pytest.fixture(scope="module")
def server(artifact):
    """The runtime serving the artifact on a free port; its URL."""
    process = subprocess.Popen([sys.executable, "-m", "advisor.runtime", str(artifact), "--serve", "--port", "0",
                                "--max-batch-size", "4", "--max-queue", "8"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()  # "serving tiny-llama (...), OpenAI-compatible API at http://...:PORT/v1"
        match = re.search(r"(http://127\.0\.0\.1:\d+)/v1", line)
        assert match, f"the runtime did not start serving: {line!r}"
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0, "the runtime did not stop cleanly on SIGTERM"


def test_the_artifact_serves_openai_requests(server):
    models = httpx.get(f"{server}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny-llama"]
    reply = httpx.post(f"{server}/v1/completions", json={"model": "tiny-llama", "prompt": "the cat", "max_tokens": 6,
                                                          "ignore_eos": True}, timeout=30).json()
    assert reply["usage"]["completion_tokens"] == 6 and reply["choices"][0]["finish_reason"] == "length"
    bad = httpx.post(f"{server}/v1/completions", content=b"{not json", timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()


def test_runtime_generates_without_serving(artifact):
    result = subprocess.run([sys.executable, "-m", "advisor.runtime", str(artifact), "--prompt", "the cat",
                             "--max-tokens", "5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_bench_serve_against_the_served_artifact_agrees_with_the_engine(server, tiny_llama_fp32, tiny_llama,
                                                                        tmp_path):
    """Low load (one request at a time), so HTTP TTFT = the engine's prefill + first token + the HTTP and SSE
    overhead: at least the engine's own TTFT measured in-process elsewhere, and not far above it."""
    from advisor.llm.measure_local import LocalMeasureSettings, measure_local

    local = measure_local(tiny_llama_fp32, tiny_llama, LocalMeasureSettings(prompt_lengths=(32,), batch_sizes=(1,),
                                                                           new_tokens=8, repeats=5))
    out = tmp_path / "bench.json"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", "from advisor.cli import main; main()", "bench-serve", server,
                             "--concurrency", "1", "--num-requests", "12", "--prompt-ids", "--vocab-size", "400",
                             "--prompt-tokens", "32", "--output-tokens", "8", "--ttft", "2s", "--itl", "1s",
                             "--json", str(out), "-q"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 120
    bench = json.loads(out.read_text())
    assert bench["requests"] == 12 and bench["errors"] == 0 and bench["output_tokens"] == 12 * 8
    assert bench["goodput_rps"] > 0
    for metric in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert 0 < bench[metric]["p50"] <= bench[metric]["p99"]
    engine_ttft = local.ttft_ms["p50"]
    # the HTTP figure includes the engine's: never below it beyond timer noise, and within 100 ms of it
    assert bench["ttft_ms"]["p50"] >= 0.8 * engine_ttft
    assert bench["ttft_ms"]["p50"] <= engine_ttft + 100.0
