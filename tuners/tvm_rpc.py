"""Apache TVM over RPC: devices registered with a TVM RPC tracker (edge boards, remote hosts) as targets of the
TVM backend. Code is compiled here for the device's TVM target and measured there: MetaSchedule's RPC runner for
tuning, and `RemoteCompiledModel` (uploaded, loaded and run on the device) for the shared harness.

Why it is shaped this way:
- A TVM RPC server serves one session at a time; the tracker queues further requests for its key until it is
  free. So this process holds at most one session per device, shared by every model it measures (a head-to-head
  binds two at once), and tuning refuses to start while it holds one: the runner's own sessions would queue
  behind it for ever.
- Every wait is bounded. TVM's own client retries a refused tracker connection for 60 s and waits without limit
  for a busy device; here a tracker is probed with a plain socket first (CONNECT_TIMEOUT_S) and a device request
  gives up after REQUEST_TIMEOUT_S, so a tracker or device lost mid-run fails a trial with the reason, not the run.
- Code goes to the device as a .tar of object files that the device links (what MetaSchedule's RPC runner does),
  so no cross linker is needed here; the device needs a C++ compiler (g++, or $CXX for its RPC server).
- Timings of a remote model include one RPC round trip per call; the device's own `time_evaluator` figures,
  without it, are recorded in the trial's details (`remote_timing`).

RPC has no authentication: whoever reaches a tracker can run code on its devices (docs/cluster.md).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from advisor.errors import MissingDependency, UserError
from hwprofiles.targets import CpuInfo, RpcDevice, Target
from tuners.base import Availability, CompiledModel

CONNECT_TIMEOUT_S = 10.0  # reaching the tracker and its first answer
REQUEST_TIMEOUT_S = 60.0  # waiting for the device to be free (another run may be measuring on it)
RUNNER_SESSION_TIMEOUT_S = 60  # one MetaSchedule candidate on the device: upload, link, run (2-core boards)
REMOTE_TIMING_S = 1.0  # of device time for the `time_evaluator` figures of a measured model
LIBRARY = "model.tar"  # what the artifact ships for an RPC device: linked where it is loaded

_SESSIONS: dict[tuple[str, int, str], Any] = {}  # (tracker host, port, key) -> the one session this process holds
_RUNNER_GAVE_UP: list[str] = []  # in MetaSchedule's runner worker: why later candidates should not wait again
_UPLOADS = itertools.count()


def _tvm():
    try:
        import tvm
    except ImportError:
        raise MissingDependency("apache-tvm", "tvm", "--tvm-rpc") from None
    return tvm


# ---- the tracker --------------------------------------------------------------------------------------------------


def tracker_summary(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
    """The tracker's summary (registered servers, queues), with a bounded wait. Raises OSError when nothing answers
    there, RuntimeError when something else does."""
    from tvm.rpc import base

    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise RuntimeError(f"{host}:{port} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"the tracker at {host}:{port} answered {value!r}")
    return value[1]


def registered_keys(summary: Mapping[str, Any]) -> list[str]:
    """Device keys with at least one server registered (the tracker lists them as `server:KEY`)."""
    return sorted({item["key"].split(":", 1)[-1] for item in summary.get("server_info", [])})


def _reachable(host: str, port: int) -> None:
    """Raise OSError now if nothing listens at the tracker's address (TVM's client would retry for 60 s)."""
    socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()


def request_session(host: str, port: int, key: str, wait_s: float = REQUEST_TIMEOUT_S, session_timeout_s: float = 0):
    """An RPC session on a device registered under `key`, waiting at most `wait_s` for one to be free.
    `session_timeout_s` > 0 lets the device end the session after that long (0: when this side closes it)."""
    from tvm import rpc

    _reachable(host, port)
    box: dict[str, Any] = {}

    def ask():
        try:
            box["session"] = rpc.connect_tracker(host, port).request(key, priority=1,
                                                                     session_timeout=session_timeout_s, max_retry=2)
        except Exception as error:  # reported to the caller below, whatever TVM raised
            box["error"] = error

    worker = threading.Thread(target=ask, name=f"tvm-rpc-request-{key}", daemon=True)
    worker.start()
    worker.join(wait_s)
    if worker.is_alive():
        raise TimeoutError(f"no device with key {key!r} became free at the tracker {host}:{port} within {wait_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["session"]


def session_for(device: RpcDevice):
    """This process's session on the device, opened on first use (see the module docstring for why only one)."""
    slot = (device.tracker_host, device.tracker_port, device.key)
    if slot not in _SESSIONS:
        try:
            _SESSIONS[slot] = request_session(*slot)
        except TimeoutError as error:  # the device stays busy, or it is gone while the tracker still runs
            raise RuntimeError(str(error)) from None
        except OSError as error:
            raise RuntimeError(f"cannot reach the TVM RPC tracker at {device.tracker}: {error}") from None
    return _SESSIONS[slot]


# ---- the device as a target ---------------------------------------------------------------------------------------


def _probe(session) -> dict[str, Any]:
    """What the device says about itself: its LLVM triple and CPU (a device with TVM's LLVM, as the PyPI wheel's
    RPC server has), and the threads its TVM runtime runs on (any TVM runtime)."""
    facts: dict[str, Any] = {"kind": "llvm"}
    for function, attribute in (("target.llvm_get_system_triple", "mtriple"), ("target.llvm_get_system_cpu", "mcpu"),
                                ("runtime.NumThreads", "num-cores")):
        try:
            value = session.get_function(function)()
        except Exception:  # a runtime-only TVM on the device lacks the LLVM queries; the caller names what is missing
            continue
        if value not in ("", "generic", None):
            facts[attribute] = int(value) if attribute == "num-cores" else str(value)
    return facts


def _cpu_info(key: str, spec: Mapping[str, Any]) -> CpuInfo:
    """The remote CPU as far as its TVM target tells: enough for labels, the TVM build and instance matching."""
    arch = str(spec.get("mtriple", "unknown")).split("-")[0]
    arch = "aarch64" if arch in ("aarch64", "arm64") else arch
    mcpu = str(spec.get("mcpu", "generic"))
    vendor = "arm" if arch.startswith(("aarch64", "arm")) else "amd" if mcpu.startswith("znver") else "unknown"
    cores = int(spec["num-cores"])
    return CpuInfo(model=f"TVM RPC device {key}", vendor=vendor, arch=arch, microarchitecture=mcpu, isa=(),
                   physical_cores=cores, logical_cores=cores, memory_gib=0.0)


def remote_target(device: RpcDevice) -> Target:
    """The target for an RPC device, checked now: the tracker answers, a device is registered under the key, and
    its TVM target is complete (--tvm-rpc-target's attributes over what the device reports). Every problem is a
    one-line UserError, raised before any tuning starts."""
    _tvm()
    where = f"the TVM RPC tracker at {device.tracker}"
    try:
        summary = tracker_summary(device.tracker_host, device.tracker_port)
    except OSError as error:
        raise UserError(f"cannot reach {where}: {error} (is `python -m tvm.exec.rpc_tracker` running there?)") \
            from None
    except RuntimeError as error:
        raise UserError(f"--tvm-rpc {device.tracker}: {error}") from None
    keys = registered_keys(summary)
    if device.key not in keys:
        raise UserError(f"no device is registered with key {device.key!r} at {where} (registered: "
                        f"{', '.join(keys) or 'none'}); start one with `python -m tvm.exec.rpc_server "
                        f"--tracker {device.tracker} --key {device.key}`")
    try:
        session = request_session(device.tracker_host, device.tracker_port, device.key)
        probed = _probe(session)
        del session  # frees the device for the tuning runs
    except (OSError, RuntimeError) as error:
        raise UserError(f"cannot open a session on device {device.key!r} at {where}: {str(error)[:200]}") from None
    spec = {**probed, **device.tvm_target}
    missing = [name for name in ("mtriple", "num-cores") if name not in spec]
    if missing:
        raise UserError(f"device {device.key!r} does not report its {' and '.join(missing)} (a TVM runtime without "
                        f"LLVM): give them with --tvm-rpc-target, e.g. '{{\"kind\": \"llvm\", \"mtriple\": "
                        f"\"aarch64-linux-gnu\", \"mcpu\": \"cortex-a72\", \"num-cores\": 4}}'")
    return Target(id=f"rpc:{device.key}", kind="cpu", cpu=_cpu_info(device.key, spec),
                  rpc=replace(device, tvm_target=spec))


def availability(device: RpcDevice) -> Availability:
    """Whether this machine can compile for the device (reachability was checked when the run started)."""
    try:
        tvm = _tvm()
    except MissingDependency as error:
        return Availability.no(str(error))
    if device.tvm_target.get("kind") != "llvm":
        return Availability.no(f"only CPU (llvm) TVM targets are supported over RPC, not {device.tvm_target!r}")
    if not tvm.runtime.enabled("llvm"):
        return Availability.no("this TVM build has no LLVM code generator to compile for the device")
    return Availability.yes()


# ---- tuning -------------------------------------------------------------------------------------------------------


def create_runner_session(rpc_config):
    """MetaSchedule's RPC runner calls this (in its worker process) for each candidate: TVM's default, with bounded
    waits, so a tracker or device lost mid-tuning fails candidates quickly instead of hanging the run. Once a
    device has not become free in time, the remaining candidates fail at once rather than each waiting again."""
    if _RUNNER_GAVE_UP:
        raise RuntimeError(_RUNNER_GAVE_UP[0])
    try:
        return request_session(rpc_config.tracker_host, int(rpc_config.tracker_port), rpc_config.tracker_key,
                               session_timeout_s=rpc_config.session_timeout_sec)
    except TimeoutError as error:
        _RUNNER_GAVE_UP.append(f"gave up on the device for this tuning run: {error}")
        raise


def tuning_runner(device: RpcDevice):
    """MetaSchedule's RPC runner for the device, measuring with the local runner's evaluator settings."""
    from tvm.s_tir import meta_schedule as ms

    if (device.tracker_host, device.tracker_port, device.key) in _SESSIONS:
        raise RuntimeError(f"this worker already holds the session on device {device.key!r}: tuning there now "
                           f"would wait for it for ever")
    config = ms.runner.RPCConfig(tracker_host=device.tracker_host, tracker_port=device.tracker_port,
                                 tracker_key=device.key, session_timeout_sec=RUNNER_SESSION_TIMEOUT_S)
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40, enable_cpu_cache_flush=False)
    return ms.runner.RPCRunner(config, evaluator, f_create_session=create_runner_session, max_workers=1)


def runner_facts(device: RpcDevice) -> dict[str, Any]:
    """For the tuned trial's details: where its candidates were measured."""
    return {"measured_on": f"rpc:{device.key}", "tracker": device.tracker}


# ---- the measured model -------------------------------------------------------------------------------------------


class RemoteCompiledModel(CompiledModel):
    """A Relax VM executable run on an RPC device. Nothing remote happens before `bind`, so exporting a candidate
    never needs the device. Inputs stay on the device between calls (`set_input`, then `invoke_stateful`)."""

    def __init__(self, executable, device: RpcDevice, input_names: list[str], details: dict[str, Any]):
        self.executable = executable
        self.rpc = device
        self.input_names = input_names
        self.details = {**details, "device": f"rpc:{device.key}", "tracker": device.tracker}
        self._vm = None
        self._device = None

    def _load(self) -> None:
        from tvm import relax

        session = session_for(self.rpc)
        started = time.perf_counter()
        name = f"advisor-{os.getpid()}-{next(_UPLOADS)}.tar"
        with tempfile.TemporaryDirectory(prefix="advisor-rpc-") as folder:
            library = Path(folder) / LIBRARY
            self.executable.export_library(str(library))  # .tar: object files, linked on the device
            self.details["upload_bytes"] = library.stat().st_size
            session.upload(str(library), name)
        module = session.load_module(name)
        self._device = session.cpu(0)
        self._vm = relax.VirtualMachine(module, self._device)
        self.details["upload_and_load_s"] = round(time.perf_counter() - started, 3)

    def bind(self, feeds):
        import tvm

        if self._vm is None:
            self._load()
        args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[name]), self._device) for name in self.input_names]
        self._vm.set_input("main", *args)
        if "remote_timing" not in self.details:
            self.details["remote_timing"] = self._remote_timing()

    def _remote_timing(self) -> dict[str, Any]:
        """The device's own timer over about REMOTE_TIMING_S: latency without the RPC round trip."""
        started = time.perf_counter()
        self.execute()  # also the warm-up
        once = max(time.perf_counter() - started, 1e-5)
        repeat = max(3, min(50, int(REMOTE_TIMING_S / once)))
        result = self._vm.time_evaluator("invoke_stateful", self._device, number=1, repeat=repeat)("main")
        values = sorted(float(value) * 1e3 for value in result.results)
        return {"p50_ms": round(values[len(values) // 2], 4), "mean_ms": round(sum(values) / len(values), 4),
                "min_ms": round(values[0], 4), "repeats": len(values), "timer": "time_evaluator on the device"}

    def execute(self):
        # a CPU kernel call over RPC returns when the device has finished: no separate sync round trip needed
        self._vm.invoke_stateful("main")

    def outputs(self):
        from tuners.tvm_compile import flatten_outputs

        return flatten_outputs(self._vm.get_outputs("main"))
