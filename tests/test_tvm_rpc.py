"""TVM RPC with a real tracker and a real RPC server on 127.0.0.1: the device as a target only TVM runs on, a tiny
MetaSchedule run measured on the device through the shared harness, `advisor recommend --tvm-rpc` end to end, and
the one-line errors (bad address, unreachable tracker, unregistered key, a tracker lost mid-run)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import models
import pytest

from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, run_job
from advisor.measure import HarnessSettings
from advisor.model import ModelSpec, analyze
from hwprofiles.targets import RpcDevice, Target
from tuners.base import Candidate, TuneContext

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'advisor[tvm]')")
pytest.importorskip("tornado", reason="the TVM RPC tracker needs tornado (pip install tornado)")
pytestmark = pytest.mark.tvm

from tuners import tvm_rpc  # noqa: E402  (needs the skips above first)
from tuners.onnxruntime import OnnxRuntimeTuner  # noqa: E402
from tuners.tensorrt import TensorRtTuner  # noqa: E402
from tuners.tvm import TvmTuner  # noqa: E402
from cli_helpers import invoke  # noqa: E402

KEY = "advisor-test"
HOST = "127.0.0.1"  # loopback only
START_TIMEOUT_S = 120  # both start with `import tvm`, slow on 2 busy cores
FAST = HarnessSettings(warmup=1, min_iterations=5, min_time_s=0.05, max_time_s=1.0, bootstrap_resamples=200)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A TVM RPC process in its own session (its forked session workers too), so the finalizer ends all of them."""
    handle = open(log, "w")
    try:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
    finally:
        handle.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _wait_for(condition, what: str, processes, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"{what}: a TVM RPC process exited: {log.read_text()[-2000:]}")
        try:
            if condition():
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def rpc_device(tmp_path_factory, request) -> tuple[RpcDevice, Path]:
    """A tracker and one RPC server registered under KEY, on free loopback ports; the server's log shows what it
    ran. One thread for the server's kernels: the CI machine's two cores are shared with the tuning run."""
    folder = tmp_path_factory.mktemp("rpc")
    tracker_port, server_port = _free_port(), _free_port()
    tracker = _start(["tvm.exec.rpc_tracker", "--host", HOST, "--port", str(tracker_port),
                      "--port-end", str(tracker_port + 1), "--silent"], folder / "tracker.log")
    request.addfinalizer(lambda: _stop(tracker))
    _wait_for(lambda: tvm_rpc.tracker_summary(HOST, tracker_port, 2) is not None, "the tracker did not answer",
              [tracker], folder / "tracker.log")
    server_log = folder / "server.log"
    server = _start(["tvm.exec.rpc_server", "--host", HOST, "--port", str(server_port),
                     "--port-end", str(server_port + 1), "--tracker", f"{HOST}:{tracker_port}", "--key", KEY],
                    server_log, env={"TVM_NUM_THREADS": "1"})
    request.addfinalizer(lambda: _stop(server))
    _wait_for(lambda: KEY in tvm_rpc.registered_keys(tvm_rpc.tracker_summary(HOST, tracker_port, 2)),
              "the server did not register", [tracker, server], server_log)
    return RpcDevice(HOST, tracker_port, KEY), server_log


@pytest.fixture(scope="module")
def remote(rpc_device) -> Target:
    return tvm_rpc.remote_target(rpc_device[0])


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory) -> Path:
    return models.save(models.tiny_cnn(32, 8), tmp_path_factory.mktemp("rpc-model") / "cnn.onnx")


def _ctx(path: Path, target: Target, tmp_path: Path) -> TuneContext:
    return TuneContext(info=analyze(ModelSpec(path, {})), target=target, workdir=tmp_path / "work",
                       cache_dir=tmp_path / "cache", budget_s=40, tolerance=0.05)


def _measure(candidates, ctx: TuneContext, tmp_path: Path, timeout_s: float = 300):
    data = ensure_reference(ctx.info, ctx.batch_size, tmp_path / "data", 120, None)
    return run_job(MeasureJob(tuple(candidates), ctx, data, FAST), "search", ExecutionLimits(timeout_s, None, None))


def _loads(server_log: Path, name: str) -> int:
    return sum(1 for line in server_log.read_text().splitlines() if "load_module" in line and name in line)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("advisor: error:") and result.output.count("\n") == 1, result.output
    return result.output


# ---- the device as a target ---------------------------------------------------------------------------------------


def test_the_device_is_a_target_only_tvm_runs_on(remote, small_cnn, tmp_path):
    assert remote.id == f"rpc:{KEY}" and remote.kind == "cpu"
    spec = remote.rpc.tvm_target
    assert spec["kind"] == "llvm" and spec["num-cores"] == 1  # the server's TVM_NUM_THREADS
    assert spec["mtriple"].startswith("x86_64") or spec["mtriple"].startswith("aarch64")
    assert remote.cpu.physical_cores == 1 and KEY in remote.label
    assert Target.from_dict(json.loads(json.dumps(remote.to_dict()))) == remote
    assert TvmTuner().availability(remote).available
    for tuner in (OnnxRuntimeTuner(), TensorRtTuner()):
        availability = tuner.availability(remote)
        assert not availability.available and "TVM RPC" in availability.reason
    untuned = TvmTuner().search(_ctx(small_cnn, remote, tmp_path)).ask()[0]
    assert untuned.target == remote.id and f"mtriple={spec['mtriple']}" in untuned.config["target"]


def test_a_given_target_overrides_what_the_device_reports(rpc_device):
    device = replace(rpc_device[0], tvm_target={"num-cores": 3, "mcpu": "x86-64"})
    target = tvm_rpc.remote_target(device)
    assert target.rpc.tvm_target["num-cores"] == 3 and target.rpc.tvm_target["mcpu"] == "x86-64"
    assert "mtriple" in target.rpc.tvm_target and target.cpu.physical_cores == 3


@pytest.mark.slow
def test_tiny_tuning_run_is_measured_on_the_device(remote, rpc_device, small_cnn, tmp_path):
    """MetaSchedule's RPC runner measures every candidate on the device (the server log shows each load); the tuned
    and untuned builds then run there through the shared harness, checked against the reference."""
    server_log = rpc_device[1]
    ctx = _ctx(small_cnn, remote, tmp_path)
    untuned = TvmTuner().search(ctx).ask()[0]
    tuned = Candidate("tvm", remote.id, {**untuned.config, "tuned": True, "tuning": "meta_schedule",
                                         "tuning_s": 20, "max_trials": 16, "batch_size": 1})
    candidates_before = _loads(server_log, "tvm_tmp_mod.tar")
    first, base = _measure([tuned, untuned], ctx, tmp_path)
    assert first.status == "ok" and base.status == "ok", (first.reason, base.reason)
    assert first.max_rel_error < 1e-3 and base.max_rel_error < 1e-3
    details = first.details
    assert details["measured_on"] == remote.id and details["trials_used"] > 0
    assert details["records_added"] == details["trials_used"]
    assert _loads(server_log, "tvm_tmp_mod.tar") - candidates_before >= details["trials_used"]
    for trial in (first, base):
        assert trial.details["device"] == remote.id and trial.details["remote_timing"]["p50_ms"] > 0
    assert _loads(server_log, "advisor-") >= 2  # both built models were uploaded and run there


def test_a_tracker_lost_mid_run_is_a_failed_trial_with_the_reason(remote, small_cnn, tmp_path):
    gone = replace(remote, rpc=replace(remote.rpc, tracker_port=_free_port()))
    ctx = _ctx(small_cnn, gone, tmp_path)
    [trial] = _measure(TvmTuner().search(ctx).ask(), ctx, tmp_path)
    assert trial.status == "failed"
    assert "cannot reach the TVM RPC tracker" in trial.reason and str(gone.rpc.tracker_port) in trial.reason


# ---- the CLI ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_recommend_with_tvm_rpc_end_to_end(rpc_device, small_cnn, tmp_path):
    device, _ = rpc_device
    out = tmp_path / "run"
    result = invoke("recommend", small_cnn, "--slo", "1s", "--backends", "tvm", "--tvm-rpc", device.tracker,
                    "--tvm-rpc-key", KEY, "--budget", "40s", "--min-time", "0.05s", "--batch-sizes", "1",
                    "--local-price", "0.01", "--cache-dir", tmp_path / "cache", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    [target] = [t for t in report["targets"] if t["id"] == f"rpc:{KEY}"]
    assert target["rpc"]["key"] == KEY and target["rpc"]["tvm_target"]["kind"] == "llvm"
    trials = [t for t in report["trials"] if t["target"] == f"rpc:{KEY}"]
    assert trials and all(t["backend"] == "tvm" for t in trials)
    assert any(t["status"] == "ok" and t["details"]["device"] == f"rpc:{KEY}" for t in trials)
    statuses = {(s["backend"], s["target"]): s for s in report["backends"]}
    assert statuses["tvm", f"rpc:{KEY}"]["available"]
    # priced below any catalogue instance, the device's row wins; its artifact is object files, linked where loaded
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    assert manifest["target"]["id"] == f"rpc:{KEY}" and manifest["target"]["rpc"]["key"] == KEY
    assert manifest["runtime"]["tvm"]["library"] == tvm_rpc.LIBRARY
    assert (out / "artifact" / "model" / tvm_rpc.LIBRARY).exists()
    verified = invoke("verify", out / "artifact", "--model", small_cnn)  # this host can run the x86 device's code
    assert verified.exit_code == 0 and "outputs: ok" in verified.output, verified.output


@pytest.mark.parametrize("args, message", [
    (["--tvm-rpc", "127.0.0.1", "--tvm-rpc-key", KEY], "--tvm-rpc must be HOST:PORT"),
    (["--tvm-rpc", "127.0.0.1:http", "--tvm-rpc-key", KEY], "--tvm-rpc must be HOST:PORT"),
    (["--tvm-rpc", "127.0.0.1:9190"], "--tvm-rpc needs --tvm-rpc-key"),
    (["--tvm-rpc-key", KEY], "need --tvm-rpc HOST:PORT"),
    (["--tvm-rpc", "127.0.0.1:70000", "--tvm-rpc-key", KEY], "port must be 1-65535"),
    (["--tvm-rpc", "127.0.0.1:9190", "--tvm-rpc-key", "a:b"], "--tvm-rpc-key must be"),
    (["--tvm-rpc", "127.0.0.1:9190", "--tvm-rpc-key", KEY, "--tvm-rpc-target", "{"], "--tvm-rpc-target is not JSON"),
    (["--tvm-rpc", "127.0.0.1:9190", "--tvm-rpc-key", KEY, "--tvm-rpc-target", '{"kind": "cuda"}'], "CPU (llvm)"),
])
def test_bad_tvm_rpc_flags_are_one_line_errors(small_cnn, tmp_path, args, message):
    result = invoke("recommend", small_cnn, "--slo", "1s", "--out", tmp_path / "run", "-q", *args)
    assert message in one_line_error(result)
    assert not (tmp_path / "run").exists()


def test_an_unreachable_tracker_is_a_one_line_error(small_cnn, tmp_path):
    port = _free_port()  # nothing listens there
    result = invoke("recommend", small_cnn, "--slo", "1s", "--out", tmp_path / "run", "-q",
                    "--tvm-rpc", f"{HOST}:{port}", "--tvm-rpc-key", KEY)
    assert f"cannot reach the TVM RPC tracker at {HOST}:{port}" in one_line_error(result)
    assert not (tmp_path / "run").exists()


def test_an_unregistered_key_is_a_one_line_error(rpc_device, small_cnn, tmp_path):
    device, _ = rpc_device
    result = invoke("recommend", small_cnn, "--slo", "1s", "--out", tmp_path / "run", "-q",
                    "--tvm-rpc", device.tracker, "--tvm-rpc-key", "no-such-board")
    line = one_line_error(result)
    assert "no device is registered with key 'no-such-board'" in line and f"registered: {KEY}" in line
