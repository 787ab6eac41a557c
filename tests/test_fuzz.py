"""Fuzzing the inputs users control: model bytes and CLI arguments never give a traceback, a crash or a hang.

Every example runs in one long-lived worker process (the real CLI through click's runner) with a hard time bound
per example: a hang fails the test naming its arguments instead of stalling the suite, and a crash of the
process (protobuf or the ONNX checker segfaulting on hostile bytes) fails it instead of taking pytest down.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = 100
EXAMPLE_TIMEOUT_S = 30.0  # analysing the tiny CNN takes well under a second; this only catches hangs
IMPORT_TIMEOUT_S = 120.0  # once per worker process: importing the CLI on a loaded 2-core machine
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

WORKER = r'''
import json, os, sys, traceback
from click.testing import CliRunner
from advisor.cli import cli

replies = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # whatever native code prints cannot corrupt the replies
for line in sys.stdin:
    result = CliRunner().invoke(cli, json.loads(line), catch_exceptions=True)
    error = result.exception
    trace = None if error is None or isinstance(error, SystemExit) else "".join(traceback.format_exception(error))
    replies.write(json.dumps({"exit_code": result.exit_code, "output": result.output, "exception": trace}) + "\n")
    replies.flush()
'''


class CliWorker:
    """The CLI in a child process, answering one argument list per line within EXAMPLE_TIMEOUT_S."""

    def __init__(self, command: tuple[str, ...] = (sys.executable, "-c", WORKER)):
        self.command = command
        self.process: subprocess.Popen | None = None
        self._warm = False  # the first answer of a fresh process also pays for importing the CLI
        self._buffer = b""

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process, self._warm, self._buffer = None, False, b""

    def invoke(self, args: list[str]) -> dict:
        if self.process is None:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
            self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL, env=env)
        self.process.stdin.write((json.dumps(args) + "\n").encode())
        self.process.stdin.flush()
        reply = self._read_line(EXAMPLE_TIMEOUT_S + (0 if self._warm else IMPORT_TIMEOUT_S), args)
        self._warm = True
        return json.loads(reply)

    def _read_line(self, timeout_s: float, args: list[str]) -> bytes:
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            ready, _, _ = select.select([fd], [], [], timeout_s)
            if not ready:
                self.close()
                pytest.fail(f"the CLI hung for more than {timeout_s:.0f} s on {args!r}")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                code = self.process.wait()
                self.close()
                pytest.fail(f"the CLI process died (exit status {code}) on {args!r}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


@pytest.fixture(scope="module")
def worker():
    cli_worker = CliWorker()
    yield cli_worker
    cli_worker.close()


def _invoke(worker: CliWorker, args: list[str]) -> dict:
    result = worker.invoke([str(a) for a in args])
    assert result["exception"] is None, result["exception"]
    assert "Traceback" not in result["output"], result["output"]
    return result


def _one_line_error(result: dict) -> None:
    assert result["output"].startswith("advisor: error:") and result["output"].count("\n") == 1, result["output"]


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_rejected_cleanly(worker, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    path.write_bytes(data)
    result = _invoke(worker, ["analyze", path])
    assert result["exit_code"] == 2
    _one_line_error(result)


@FUZZ
@given(data=st.data())
def test_mutated_model_bytes(worker, cnn_path, tmp_path_factory, data):
    original = bytearray(Path(cnn_path).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(original) - 1))
        original[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        original = original[: data.draw(st.integers(0, len(original)))]
    path = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    path.write_bytes(bytes(original))
    result = _invoke(worker, ["analyze", path])
    assert result["exit_code"] in (0, 2)
    if result["exit_code"] == 2:
        _one_line_error(result)


@FUZZ
@given(slo=st.text(max_size=12), shape=st.text(max_size=20), budget=st.text(max_size=8),
       batch_sizes=st.text(max_size=8), percentile=st.text(max_size=4), timeout=st.text(max_size=6))
def test_cli_arguments(worker, cnn_path, tmp_path_factory, slo, shape, budget, batch_sizes, percentile, timeout):
    out = tmp_path_factory.mktemp("fuzz") / "never"
    args = ["recommend", cnn_path, "--slo", slo, "--input-shape", "zz" + shape, "--budget", budget,
            "--batch-sizes", batch_sizes or "1", "--percentile", percentile or "p99", "--trial-timeout",
            timeout or "10s", "--out", out]
    result = _invoke(worker, args)
    assert result["exit_code"] == 2  # the shape always names an unknown input, if nothing else is wrong
    _one_line_error(result)
    assert not out.exists(), "a bad input must be refused before anything is written"


@pytest.mark.parametrize("slo", ["abc", "-5ms", "0", "0ms", "", "5 parsecs"])
def test_malformed_slo(worker, cnn_path, slo):
    result = _invoke(worker, ["recommend", cnn_path, "--slo", slo])
    assert result["exit_code"] == 2
    _one_line_error(result)


def test_a_hang_fails_within_the_time_bound(monkeypatch):
    """The bound itself: an example that never answers fails the test quickly instead of stalling the suite."""
    monkeypatch.setattr(sys.modules[__name__], "EXAMPLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(sys.modules[__name__], "IMPORT_TIMEOUT_S", 0.0)
    stalled = CliWorker((sys.executable, "-c", "import time; time.sleep(600)"))
    with pytest.raises(pytest.fail.Exception, match="hung for more than 1 s"):
        stalled.invoke(["analyze", "x.onnx"])
    assert stalled.process is None, "the hung worker was not killed"


def test_a_crash_fails_the_example_not_the_suite():
    stalled = CliWorker((sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    with pytest.raises(pytest.fail.Exception, match="died"):
        stalled.invoke(["analyze", "x.onnx"])
