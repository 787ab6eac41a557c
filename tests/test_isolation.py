"""Faults injected for real in isolated children: each becomes a reason, never the end of the caller."""

import faults
from advisor.isolation import run_isolated


def test_value_round_trip():
    result = run_isolated(faults.echo, ({"a": [1, 2]},), timeout_s=60)
    assert result.ok and result.value == {"a": [1, 2]}


def test_segfault_is_reported():
    result = run_isolated(faults.segfault, timeout_s=60)
    assert not result.ok and result.reason == "crashed with SIGSEGV"


def test_abort_is_reported():
    result = run_isolated(faults.abort, timeout_s=60)
    assert not result.ok and result.reason == "crashed with SIGABRT"


def test_hang_times_out():
    result = run_isolated(faults.hang, timeout_s=3)
    assert not result.ok and result.reason == "timed out after 3 s"
    assert result.wall_s < 15


def test_memory_limit():
    result = run_isolated(faults.allocate, (1024,), timeout_s=60, memory_limit_mib=300)
    assert not result.ok and result.reason == "exceeded the memory limit of 300 MiB"
    assert result.peak_rss_mib > 300


def test_exception_message_and_traceback():
    result = run_isolated(faults.fail, ("bad <thing>",), timeout_s=60)
    assert not result.ok and result.reason == "ValueError: bad <thing>"
    assert "Traceback" in result.traceback


def test_silent_exit():
    result = run_isolated(faults.exit_silently, (7,), timeout_s=60)
    assert not result.ok and result.reason == "exited with code 7 without a result"


def test_child_output_goes_to_log(tmp_path):
    log = tmp_path / "workers.log"
    result = run_isolated(faults.shout, ("logged",), timeout_s=60, log_path=log)
    assert result.ok and result.value == "logged"
    # the parent opens the log; what proves the child's streams went there is the child's own lines in it
    text = log.read_text()
    assert "stdout: logged" in text and "stderr: logged" in text


def test_orphaned_child_stops_itself(tmp_path):
    """kill -9 of the parent must not leave a hung worker behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, faults\n"
        "from advisor.isolation import run_isolated\n"
        "run_isolated(faults.hang, timeout_s=3600)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    parent = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.monotonic() + 30
    children = []
    while time.monotonic() < deadline and not children:
        children = psutil.Process(parent.pid).children()
        time.sleep(0.1)
    assert children, "the worker never started"
    worker = children[0]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    worker.wait(timeout=30)  # raises psutil.TimeoutExpired if the worker outlives its parent
