"""bench/gpu_llm_calibration.py on the CPU: the smoke run end to end in a subprocess (as the GPU machine runs it, with
pydantic and yaml unimportable from the repository's code), its JSON and measurement records, bad arguments, the
time budget, a missing transformers, and the decode step against transformers' own forward. The real run is the
`gpu` test at the end (skipped without a CUDA GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpu import gpu_reason, requires_gpu

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_llm_calibration.py"
SMOKE_TIMEOUT_S = 120

# Runs the script after installing an import hook that refuses some modules: `everywhere` or only when the importing
# code lives in this repository (not in the venv), so transformers may still use its own yaml while advisor may not.
WRAPPER = """
import runpy, sys
blocked, everywhere, repo = set(sys.argv[1].split(",")), sys.argv[2] == "1", sys.argv[3]
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in blocked:
            return None
        frame = sys._getframe(1)
        while frame and (frame.f_code.co_filename.startswith("<frozen") or "importlib" in frame.f_code.co_filename):
            frame = frame.f_back
        where = frame.f_code.co_filename if frame else ""
        if everywhere or (where.startswith(repo) and "/.venv/" not in where):
            raise ImportError(f"{name} blocked by the test (imported from {where})")
        return None
sys.meta_path.insert(0, Block())
code = sys.argv[4]
sys.argv = sys.argv[4:]
if code.endswith(".py"):
    runpy.run_path(code, run_name="__main__")
else:
    exec(code)
"""


def run_blocked(blocked: str, target: str, *args, everywhere: bool = False,
                timeout: float = SMOKE_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRAPPER, blocked, "1" if everywhere else "0", str(REPO), target,
                           *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def run_script(*args, timeout: float = SMOKE_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def only_json(folder: Path) -> dict:
    files = sorted(folder.glob("gpu_llm_calibration-*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke run, with pydantic and yaml unimportable from the repository's code."""
    out = tmp_path_factory.mktemp("smoke")
    done = run_blocked("pydantic,yaml", str(SCRIPT), "--out", out, "--smoke", "--device", "cpu", "--repeats", 3)
    assert done.returncode == 0, done.stdout + done.stderr
    return done, only_json(out)


@pytest.fixture(scope="module")
def calibration():
    """The script as a module, for the in-process checks."""
    spec = importlib.util.spec_from_file_location("gpu_llm_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_measurements_that_round_trip(smoke):
    from advisor.llm.architecture import load_architecture
    from advisor.llm.measurement_record import LlmMeasurement
    from advisor.llm.perf import model_work
    from advisor.llm.precision import precision_named

    done, doc = smoke
    assert doc["schema"] == "advisor.gpu_llm_calibration/v1" and doc["complete"] is True, doc["parts"]
    assert doc["errors"] == []
    assert doc["gpu"] is None and doc["host"]["cores"] >= 1 and doc["versions"]["torch"]
    assert [m["id"].split("-bf16-")[1].split("-")[0] for m in doc["measurements"]] == ["eager"]
    record = LlmMeasurement.from_dict(doc["measurements"][0])
    assert record.to_dict() == doc["measurements"][0]
    assert record.engine == "pytorch" and record.hardware.kind == "cpu" and record.precision == "bf16"
    assert record.hardware.detail["peaks_from"].startswith("measured by this run")
    assert all(step.ms > 0 and step.samples == 3 for step in record.steps)
    assert sorted(s.prompt_tokens for s in record.steps if s.kind == "prefill") == [16, 64]
    decode = {(s.batch, s.context) for s in record.steps if s.kind == "decode"}
    assert decode == {(1, 32), (1, 128), (4, 32), (4, 128)}
    # the work is perf.model_work of the smoke model
    smoke_config = doc["model"]["hf_config"]
    assert smoke_config["num_hidden_layers"] == 2 and smoke_config["hidden_size"] == 256
    arch_dir = Path(doc["settings"]["out"]) / "llama-3.1-8b-smoke"
    arch_dir.mkdir(exist_ok=True)
    (arch_dir / "config.json").write_text(json.dumps(smoke_config))
    assert record.work == model_work(load_architecture(arch_dir), precision_named("bf16"), "bf16")
    assert "written:" in done.stdout and "complete: True" in done.stdout
    check = doc["model"]["decode_check"]  # the script's decode step against transformers' forward, in bf16
    assert check["argmax_agree"] == 1.0 and check["max_abs_diff"] <= 0.05 * check["max_abs_logit"], check


@pytest.mark.slow
def test_microbenchmarks_have_cpu_fallbacks_and_reasons(smoke):
    _, doc = smoke
    bench = doc["microbenchmarks"]
    assert bench["bf16_matmul_tflops"] > 0 and bench["hbm_bandwidth_gbs"] > 0
    assert "CPU fallback" in bench["bf16_matmul"]["note"] and "CPU fallback" in bench["hbm_bandwidth"]["note"]
    assert bench["hbm_bandwidth"]["copy"]["gbs"] == bench["hbm_bandwidth_gbs"]
    assert bench["fp8_matmul_tflops"] is None and "compute capability >= 8.9" in bench["fp8_matmul"]["reason"]
    skipped = {(s["part"], s.get("benchmark")) for s in doc["skipped"]}
    assert ("matmul", "fp8") in skipped and ("cudagraph", None) in skipped
    assert doc["parts"]["cudagraph"] == {"status": "skipped", "seconds": 0.0,
                                         "reason": "CUDA graphs need --device cuda"}


@pytest.mark.slow
def test_runs_where_pydantic_and_yaml_are_missing(smoke):
    """The smoke fixture ran with both blocked for the repository's code; the block itself must bite."""
    done, _ = smoke
    assert done.returncode == 0
    probe = run_blocked("pydantic,yaml", "import hwprofiles.catalog", timeout=60)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr, probe.stderr


def test_without_transformers_the_microbenchmarks_still_run(tmp_path):
    done = run_blocked("transformers", str(SCRIPT), "--out", tmp_path, "--smoke", "--device", "cpu", everywhere=True)
    assert done.returncode == 0, done.stderr
    doc = only_json(tmp_path)
    assert doc["complete"] is False and doc["measurements"] == []
    assert doc["parts"]["model"]["status"] == "error"
    assert any(e["part"] == "model" and "transformers blocked" in e["error"] for e in doc["errors"]), doc["errors"]
    assert {doc["parts"][p]["status"] for p in ("prefill", "decode")} == {"not run"}
    assert doc["microbenchmarks"]["bf16_matmul_tflops"] > 0 and doc["microbenchmarks"]["hbm_bandwidth_gbs"] > 0


@pytest.mark.parametrize("args, says", [
    (["--smoke"], "the following arguments are required: --out"),
    (["--out", "x", "--repeats", "1"], "--repeats must be at least 3"),
    (["--out", "x", "--prompt-lengths", "128,0"], "expected comma-separated positive integers"),
    (["--out", "x", "--batch-sizes", "a"], "expected comma-separated positive integers"),
    (["--out", "x", "--skip", "prefill,warp"], "unknown part(s) warp"),
    (["--out", "x", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["--out", "x", "--max-seconds", "0"], "--max-seconds must be positive"),
    (["--out", "x", "--config", "/nonexistent/config.json"], "no such file"),
])
def test_bad_arguments_exit_2_with_one_line(args, says):
    done = run_script(*args, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("gpu_llm_calibration.py: error:"), done.stderr
    assert says in done.stderr


def test_a_config_that_is_not_llama_is_a_bad_argument(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}))
    done = run_script("--out", tmp_path, "--config", config, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "llama models only" in done.stderr


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    if gpu_reason() is None:
        pytest.skip("this machine has an NVIDIA GPU")
    done = run_script("--out", tmp_path, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "torch.cuda.is_available() is False" in done.stderr and not list(tmp_path.iterdir())


def test_a_budget_spent_before_the_first_part_still_writes_json(tmp_path):
    """The budget counts from the start: 10 ms are gone before torch is imported, so no part starts, and the JSON
    still holds the environment, the settings and the model's work, marked incomplete."""
    done = run_script("--out", tmp_path, "--smoke", "--device", "cpu", "--max-seconds", 0.01)
    assert done.returncode == 0, done.stderr
    doc = only_json(tmp_path)
    assert doc["complete"] is False and doc["measurements"] == [] and doc["versions"]["torch"]
    assert doc["model"]["work"]["layers"] == 2
    assert {p: v["status"] for p, v in doc["parts"].items()} == {
        "matmul": "not run", "bandwidth": "not run", "model": "not run", "prefill": "not run",
        "decode": "not run", "cudagraph": "skipped"}
    assert doc["parts"]["matmul"]["reason"].startswith("time budget: ")
    assert doc["parts"]["prefill"]["reason"].startswith("no model")


def test_a_run_killed_mid_part_leaves_the_parts_before(tmp_path):
    """The JSON is rewritten after every part: kill the run while the model part imports transformers (seconds),
    and the microbenchmarks are on disk."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), "--out", tmp_path, "--smoke", "--device", "cpu"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SMOKE_TIMEOUT_S
        doc = {}
        while time.monotonic() < deadline and "bandwidth" not in doc.get("parts", {}):
            time.sleep(0.05)
            files = list(tmp_path.glob("gpu_llm_calibration-*.json"))
            doc = json.loads(files[0].read_text()) if files else {}
        process.kill()
    finally:
        process.kill()
        process.wait(timeout=30)
    doc = only_json(tmp_path)
    assert doc["parts"]["matmul"]["status"] == doc["parts"]["bandwidth"]["status"] == "done"
    assert doc["microbenchmarks"]["bf16_matmul_tflops"] > 0 and doc["microbenchmarks"]["hbm_bandwidth_gbs"] > 0
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.slow
def test_decode_step_computes_what_transformers_computes(calibration):
    """Token by token through the script's KV-cached step (fp32) gives transformers' logits for the last token."""
    import torch

    config = json.loads((REPO / "examples/llm/llama-3.1-8b/config.json").read_text()) | calibration.SMOKE_CONFIG
    torch.manual_seed(0)
    model = calibration.build_model(config, "cpu", torch.float32)
    ids = torch.randint(0, config["vocab_size"], (3, 10))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits[:, -1]
        step = calibration.DecodeStep(model, batch=3, cache_len=16, position=0)
        for position in range(ids.shape[1]):
            step.move_to(position)
            step.token_ids.copy_(ids[:, position:position + 1])
            logits = step()
    assert torch.allclose(logits[:, -1], expected, atol=1e-4), (logits[:, -1] - expected).abs().max()
    assert torch.equal(step.token_ids[:, 0], expected.argmax(-1))


def test_fp8_scaled_mm_call(calibration):
    """The fp8 benchmark's torch._scaled_mm call as the GPU runs it (this torch also has a CPU kernel)."""
    import torch

    try:
        torch._scaled_mm(torch.zeros(16, 16).to(torch.float8_e4m3fn), torch.zeros(16, 16).to(torch.float8_e4m3fn).t(),
                         scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as error:
        pytest.skip(f"this torch has no CPU fp8 _scaled_mm: {error}")
    result = calibration.fp8_matmul("cpu", 32, repeats=3, warmup=1)
    assert result["tflops"] > 0 and result["shape_mnk"] == [32, 32, 32] and result["samples"] == 3


def test_median_interval_is_the_order_statistic_interval(calibration):
    xs = [float(v) for v in range(1, 21)]
    assert calibration.median_interval(xs) == (10.5, (6.0, 15.0))  # n = 20: ranks 6 and 15
    assert calibration.median_interval(xs[:10]) == (5.5, (2.0, 9.0))  # n = 10: ranks 2 and 9
    assert calibration.median_interval([3.0, 1.0, 2.0]) == (2.0, (1.0, 3.0))  # n <= 5: min and max


@requires_gpu
def test_real_run_on_the_gpu(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("torch.cuda.is_available() is False: this torch has no CUDA GPU")
    done = run_script("--out", tmp_path, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc = only_json(tmp_path)
    assert doc["complete"] is True and doc["gpu"]["name"], doc["errors"]
    assert doc["microbenchmarks"]["bf16_matmul_tflops"] > 50 and doc["microbenchmarks"]["hbm_bandwidth_gbs"] > 500
    modes = {m["id"].split("-bf16-")[1].split("-")[0] for m in doc["measurements"]}
    assert modes == {"eager", "cudagraph"}
    from advisor.llm.measurement_record import LlmMeasurement

    for data in doc["measurements"]:
        record = LlmMeasurement.from_dict(data)
        assert sorted(s.prompt_tokens for s in record.steps if s.kind == "prefill") == [128, 512, 2048, 8192]
        assert len([s for s in record.steps if s.kind == "decode"]) >= 10  # 12 points, batch 64 x 8192 may not fit
