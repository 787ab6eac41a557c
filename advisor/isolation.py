"""Run a function in a child process that may crash, hang or eat memory without taking the run down.

The child is a fresh Python process in its own session (so its whole process group can be killed); the parent
polls it for its result, its wall time and the resident memory of its process tree. Whatever goes wrong becomes
an IsolatedResult with a reason a user can read: a signal, a time-out, a memory limit or the child's exception.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

POLL_INTERVAL_S = 0.05  # the time-out and the worker's own memory: reading one /proc file costs ~20 us
# The memory of the worker's own children (a compiler's process pool) is read less often: finding them scans every
# process (~1 ms of CPU), and on a 2-core machine that burst, every 50 ms, landed in the worker's timings (a tiny
# CNN's solo p99 went from 1.3 to 2.8 ms at batch 8).
TREE_POLL_INTERVAL_S = 1.0


@dataclass(frozen=True)
class IsolatedResult:
    ok: bool
    value: Any = None
    reason: str | None = None  # why it failed: "crashed with SIGSEGV", "timed out after 30 s", ...
    traceback: str | None = None
    peak_rss_mib: float | None = None
    wall_s: float = 0.0


def child_main() -> None:
    """Child-process entry: read the pickled call from stdin, run it, write the pickled outcome to the fd in argv."""
    result_fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    # the parent's pid comes from the parent: if it died while this process was still starting, getppid() here
    # would already name its adopter and the orphan would never be noticed
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    func, args = pickle.load(sys.stdin.buffer)
    try:
        outcome = ("ok", func(*args), None)
    except BaseException as error:  # the parent decides what a failure means; the child only reports it
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0][:500]
        outcome = ("error", message, traceback.format_exc())
    try:
        payload = pickle.dumps(outcome)
    except Exception as error:
        payload = pickle.dumps(("error", f"unpicklable result: {error}"[:500], traceback.format_exc()))
    with os.fdopen(result_fd, "wb") as handle:
        handle.write(payload)


def _exit_when_orphaned(parent_pid: int) -> None:
    """A parent killed with SIGKILL cannot stop its children: they notice and stop themselves."""
    while True:
        if os.getppid() != parent_pid:
            os.killpg(os.getpgid(0), signal.SIGKILL)  # this worker leads its own group: takes its workers along
        time.sleep(0.5)


def _rss_bytes(processes) -> int:
    total = 0
    for proc in processes:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def _descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _kill_tree(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the child called setsid(), so its pid is its group id
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code == 0:
        return "exited without a result"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"crashed with {name}"
    return f"exited with code {code} without a result"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # the child imports what the parent can
    return env


def run_isolated(func: Callable, args: tuple = (), *, timeout_s: float, memory_limit_mib: float | None = None,
                 log_path: Path | None = None) -> IsolatedResult:
    """Call `func(*args)` in a fresh Python process; `func` must be importable, args and result picklable.

    A plain subprocess rather than multiprocessing: the child never re-imports the caller's __main__, and it
    runs in its own session so a compiler's worker processes die with it.
    """
    read_fd, write_fd = os.pipe()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    start = time.monotonic()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "from advisor.isolation import child_main; child_main()", str(write_fd),
             str(os.getpid())],
            stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(write_fd,), start_new_session=True,
            env=_child_env(),
        )
    finally:
        os.close(write_fd)
        if log_path:
            log.close()
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(read_fd, chunks), daemon=True)
    reader.start()
    try:
        child.stdin.write(pickle.dumps((func, args)))
        child.stdin.close()
    except BrokenPipeError:
        pass
    handle = psutil.Process(child.pid)
    peak = 0
    reason = None
    descendants: list[psutil.Process] = []
    tree_checked = float("-inf")
    while child.poll() is None:
        if time.monotonic() - tree_checked >= TREE_POLL_INTERVAL_S:
            descendants, tree_checked = _descendants(handle), time.monotonic()
        peak = max(peak, _rss_bytes([handle, *descendants]))
        if memory_limit_mib is not None and peak > memory_limit_mib * 2**20:
            reason = f"exceeded the memory limit of {memory_limit_mib:.0f} MiB"
            break
        if time.monotonic() - start > timeout_s:
            reason = f"timed out after {timeout_s:.0f} s"
            break
        time.sleep(POLL_INTERVAL_S)
    _kill_tree(child.pid)  # also reaps workers the child left in its session
    child.wait()
    reader.join(timeout=10)
    wall = time.monotonic() - start
    peak_mib = round(peak / 2**20, 1) if peak else None
    if reason is not None:
        return IsolatedResult(False, reason=reason, peak_rss_mib=peak_mib, wall_s=wall)
    try:
        status, value, trace = pickle.loads(b"".join(chunks))
    except Exception:
        return IsolatedResult(False, reason=_describe_exit(child.returncode), peak_rss_mib=peak_mib, wall_s=wall)
    if status == "ok":
        return IsolatedResult(True, value=value, peak_rss_mib=peak_mib, wall_s=wall)
    return IsolatedResult(False, reason=value, traceback=trace, peak_rss_mib=peak_mib, wall_s=wall)


def _read_all(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(1 << 16):
            chunks.append(block)
