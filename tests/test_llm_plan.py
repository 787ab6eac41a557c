"""`advisor recommend` on generative LLMs: planning from the shipped public configs, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cli_helpers import invoke, one_line_error

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "llm"
LLAMA_70B = EXAMPLES / "llama-3.1-70b"
LLAMA_8B = EXAMPLES / "llama-3.1-8b"
NO_FP8 = {"T4", "A10G", "A100"}


@pytest.fixture(scope="module")
def llama_70b_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm") / "run"
    result = invoke("recommend", LLAMA_70B, "--ttft", "800ms", "--itl", "60ms", "--percentile", "p95",
                    "--prompt-tokens", "2000", "--output-tokens", "300", "--qps", "4", "--context", "8192",
                    "--provider", "aws", "--out", out)
    return result, out


def test_llama_70b_is_planned_end_to_end(llama_70b_run):
    result, out = llama_70b_run
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "advisor.report/v1" and report["mode"] == "generative"
    assert report["status"] == "recommended"
    llm = report["model"]["llm"]
    assert llm["layers"] == 80 and llm["kv_heads"] == 8 and llm["head_dim"] == 128
    assert llm["kv_cache_bytes_per_token"]["fp16"] == 2 * 80 * 8 * 128 * 2  # K and V, 80 layers, 8 KV heads
    assert report["slo"] == {"ttft_ms": 800.0, "itl_ms": 60.0, "percentile": "p95"}
    rec = report["recommendation"]
    # 70 B parameters are 141 GB in bf16: no single 80 GB GPU holds them, so the answer is several GPUs or < 16 bits
    assert rec["tensor_parallel"] > 1 or rec["precision"] in ("fp8", "int8-wo", "int4-wo")
    assert rec["ttft_ms_interval"][1] <= 800 and rec["itl_ms_interval"][1] <= 60  # met at the pessimistic end
    assert rec["instances_needed"] >= 1 and rec["monthly_cost"] == pytest.approx(
        rec["instances_needed"] * rec["price_per_hour"] * 730)
    for row in report["ranking"]:
        # the cost per token follows from the price and the simulated output rate (by hand)
        assert row["cost_per_million_output_tokens"] == pytest.approx(
            row["price_per_hour"] / (row["output_tokens_per_s"] * 3600) * 1e6)
        assert row["output_tokens_per_s"] == pytest.approx(row["replicas"] * row["rate_rps"] * 300)
        assert row["devices"] % row["tensor_parallel"] == 0 and row["max_concurrent_sequences"] >= 1
        assert row["memory"]["fits"]
        if row["device"] in NO_FP8:
            assert row["precision"] != "fp8" and row["kv_cache_dtype"] != "fp8"
        assert row["source"] in ("fitted", "roofline") and row["efficiency_source"]
    costs = [r["cost_per_million_output_tokens"] for r in report["ranking"]]
    assert costs == sorted(costs) and report["ranking"][0]["instance"] == rec["instance"]
    assert any("needs" in e["reason"] and "GiB" in e["reason"] for e in report["excluded"])
    assert "Recommendation:" in result.output and (out / "summary.md").is_file()
    page = (out / "report.html").read_text()
    assert "<script" not in page and "script-src &#39;none&#39;" in page  # offline and inert
    assert f"<h2 id=\"verdict-title\">{rec['instance']} —" in page
    # one recommended row in the ranking, one in the load-curve table (the planned rate)
    assert page.count('class="recommended"') == 1 + (report["load_curve"] is not None)


def test_the_serving_artifact_is_written_and_verifies(llama_70b_run):
    _, out = llama_70b_run
    rec = json.loads((out / "report.json").read_text())["recommendation"]
    artifact = Path(rec["artifact"])
    launch = (artifact / "launch.sh").read_text()
    assert "vllm serve" in launch and f"--tensor-parallel-size {rec['tensor_parallel']}" in launch
    assert "--max-model-len 8192" in launch
    manifests = list(yaml.safe_load_all((artifact / "k8s.yaml").read_text()))
    assert any(m and m.get("kind") == "Deployment" for m in manifests)
    result = invoke("verify", artifact)
    assert result.exit_code == 0, result.output


def test_a_model_too_big_for_every_instance_is_exit_3_with_the_reason(tmp_path):
    """Llama 3.1 405B: even in int4 (~4.25 bits a weight with group scales) its ~405 G weights are ~200 GiB, far
    more than the one 24 GB A10G of the only instance offered."""
    catalog = tmp_path / "small.yaml"
    catalog.write_text(yaml.safe_dump({"provider": "other", "defaults": {
        "region": "lab", "price_source": "a test quote", "price_date": "2026-12-01", "spec_source": "NVIDIA A10",
        "spec_date": "2026-12-01"}, "instances": [{
            "name": "one-a10g", "vcpus": 4, "memory_gib": 16, "price_per_hour": 1.0,
            "cpu": {"vendor": "amd", "model": "EPYC", "microarchitecture": "znver2", "isa": ["avx2", "fma"],
                    "physical_cores": 2, "smt": True},
            "gpu": {"model": "A10G", "count": 1, "memory_gib": 24},
            "peak": {"fp32_gflops": 31200, "fp16_gflops": 125000, "int8_gops": 250000, "bandwidth_gbs": 600}}]}))
    result = invoke("recommend", EXAMPLES / "llama-3.1-405b", "--ttft", "2s", "--itl", "100ms",
                    "--prompt-tokens", "1000", "--output-tokens", "200", "--catalog", catalog, "--provider", "other",
                    "--out", tmp_path / "run")
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "no_slo_met" and report["recommendation"] is None and report["ranking"] == []
    [excluded] = report["excluded"]
    assert excluded["instance"] == "one-a10g" and "needs" in excluded["reason"] and "GiB" in excluded["reason"]
    # the closest miss is the smallest precision: int4 weights alone are over 8x the usable 21.6 GiB (24 GB x 0.9)
    miss = report["closest_miss"]
    assert miss["instance"] == "one-a10g" and miss["precision"] == "int4-wo" and miss["tensor_parallel"] == 1
    assert miss["usable_gib_per_device"] == pytest.approx(24 * 0.9, abs=0.5) and miss["need_over_usable"] > 8
    assert "No instance meets the SLOs; closest: one-a10g (int4-wo, TP 1) needs" in " ".join(result.output.split())
    assert "one-a10g</b>: needs" in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--ttft", "800ms", "--output-tokens", "10"], "--prompt-tokens"),
    (["--ttft", "800ms", "--prompt-tokens", "200000", "--output-tokens", "10"], "exceed"),
    (["--ttft", "abc", "--prompt-tokens", "10", "--output-tokens", "10"], "invalid latency"),
    (["--slo", "50ms"], "causal language model"),
    (["--ttft", "800ms", "--slo", "50ms", "--prompt-tokens", "10", "--output-tokens", "10"], "--ttft/--itl"),
])
def test_bad_generative_input_is_one_line(tmp_path, args, message):
    result = invoke("recommend", LLAMA_8B, *args, "--out", tmp_path / "never")
    assert result.exit_code == 2, result.output
    assert message in one_line_error(result)
    assert not (tmp_path / "never").exists()


def test_a_config_that_is_not_a_causal_lm_is_refused(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert",
                                                    "hidden_size": 768, "num_hidden_layers": 12}))
    result = invoke("recommend", folder, "--generative", "--ttft", "800ms", "--prompt-tokens", "10",
                    "--output-tokens", "10", "--out", tmp_path / "never")
    assert result.exit_code == 2 and "causal" in one_line_error(result)
