"""What this machine has: its CPU (model, microarchitecture, ISA, cores, memory) and NVIDIA GPUs, as typed objects."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import psutil

ISA_FLAGS_OF_INTEREST = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
    "neon", "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16",
)

# GPU product names as nvidia-smi prints them -> the GPU type names the catalogue uses.
GPU_CATALOG_TYPES = (("H200", "H200"), ("H100", "H100"), ("A100", "A100"), ("L40S", "L40S"), ("A10G", "A10G"),
                     ("A10", "A10G"), ("L4", "L4"), ("T4", "T4"), ("V100", "V100"))


# x86 flags of CPUs with native bf16 kernels in the CPU runtimes (OpenVINO, oneDNN under PyTorch); Arm's `bf16`
# extension is left out until a backend is measured on one
BF16_ISA = ("avx512_bf16", "amx_bf16")


def cpu_computes_bf16(isa) -> bool:
    return any(flag in BF16_ISA for flag in isa)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str  # "amd", "intel", "arm" or "unknown"
    arch: str  # "x86_64", "aarch64"
    microarchitecture: str  # LLVM -mcpu name where known (znver3, sapphirerapids, neoverse-v1, ...), else "generic"
    isa: tuple[str, ...]
    physical_cores: int
    logical_cores: int
    memory_gib: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["isa"] = list(self.isa)
        return data

    @property
    def computes_bf16(self) -> bool:
        """Whether this CPU computes bf16 natively (AVX-512-BF16 or AMX): only there do backends offer bf16."""
        return cpu_computes_bf16(self.isa)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    memory_gib: float
    compute_capability: str
    driver_version: str
    cuda_version: str
    catalog_type: str | None  # "H100", "A10G", ... or None when the catalogue has no such GPU

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RpcDevice:
    """A device registered with a TVM RPC tracker under a key (an edge board, a remote host). Only the TVM backend
    runs there: it compiles here for `tvm_target` and measures over RPC. `tvm_target` is TVM's dict form; empty
    until the run starts, when it is taken from --tvm-rpc-target or asked of the device (tuners/tvm_rpc.py)."""

    tracker_host: str
    tracker_port: int
    key: str
    tvm_target: dict = field(default_factory=dict, hash=False)

    @property
    def tracker(self) -> str:
        return f"{self.tracker_host}:{self.tracker_port}"

    def to_dict(self) -> dict:
        return {"tracker_host": self.tracker_host, "tracker_port": self.tracker_port, "key": self.key,
                "tvm_target": dict(self.tvm_target)}

    @classmethod
    def from_dict(cls, data: dict) -> RpcDevice:
        return cls(data["tracker_host"], int(data["tracker_port"]), data["key"], dict(data.get("tvm_target") or {}))


@dataclass(frozen=True)
class Target:
    """A place a model can run: this machine's CPU, one CUDA GPU (with the host CPU beside it), or a TVM RPC device
    (`rpc` set; then `cpu` describes the remote CPU as far as its TVM target tells)."""

    id: str  # "cpu", "cuda:0" or "rpc:KEY"
    kind: str  # "cpu" or "cuda"
    cpu: CpuInfo
    gpu: GpuInfo | None = None
    threads: int = field(default=0)  # cores the backends may use; 0 means all physical cores
    instance: str | None = None  # the catalogue instance this target is (set for cluster nodes), else None
    rpc: RpcDevice | None = None  # set for a device measured through a TVM RPC tracker

    @property
    def label(self) -> str:
        if self.rpc is not None:
            return f"{self.cpu.model} ({self.cpu.physical_cores} cores, {self.cpu.microarchitecture}, " \
                   f"tracker {self.rpc.tracker})"
        if self.instance is not None:
            return f"{self.instance} ({self.gpu.name if self.gpu else self.cpu.model}, cluster node)"
        if self.gpu is not None:
            return f"{self.gpu.name} (cuda:{self.gpu.index})"
        return f"{self.cpu.model} ({self.cpu.physical_cores} cores, {self.cpu.microarchitecture})"

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "label": self.label, "cpu": self.cpu.to_dict(),
                "gpu": self.gpu.to_dict() if self.gpu else None, "instance": self.instance,
                "rpc": self.rpc.to_dict() if self.rpc else None}

    @classmethod
    def from_dict(cls, data: dict) -> Target:
        gpu, rpc = data.get("gpu"), data.get("rpc")
        return cls(id=data["id"], kind=data["kind"], cpu=CpuInfo(**{**data["cpu"], "isa": tuple(data["cpu"]["isa"])}),
                   gpu=GpuInfo(**gpu) if gpu else None, instance=data.get("instance"),
                   rpc=RpcDevice.from_dict(rpc) if rpc else None)


def _cpuinfo_fields() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    return fields


def _amd_microarchitecture(family: int, model: int) -> str:
    if family == 0x17:
        return "znver2" if model >= 0x30 else "znver1"
    if family == 0x19:
        return "znver4" if (0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or model >= 0xA0) else "znver3"
    if family == 0x1A:
        return "znver5"
    return "generic"


def _intel_microarchitecture(flags: set[str]) -> str:
    if "amx_tile" in flags:
        return "sapphirerapids"
    if "avx512_vnni" in flags and "avx512_bf16" in flags:
        return "cooperlake"
    if "avx512_vnni" in flags and "gfni" in flags:
        return "icelake-server"
    if "avx512_vnni" in flags:
        return "cascadelake"
    if "avx512f" in flags:
        return "skylake-avx512"
    if "avx2" in flags:
        return "haswell"
    return "generic"


_ARM_PARTS = {"0xd0c": "neoverse-n1", "0xd40": "neoverse-v1", "0xd49": "neoverse-n2", "0xd4f": "neoverse-v2",
              "0xd8e": "neoverse-n3", "0xd84": "neoverse-v3"}


def _physical_cores() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def detect_cpu() -> CpuInfo:
    fields = _cpuinfo_fields()
    arch = platform.machine() or "unknown"
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    vendor_id = fields.get("vendor_id", "")
    if vendor_id == "AuthenticAMD":
        vendor = "amd"
        micro = _amd_microarchitecture(int(fields.get("cpu family", "0")), int(fields.get("model", "0")))
    elif vendor_id == "GenuineIntel":
        vendor, micro = "intel", _intel_microarchitecture(flags)
    elif arch in ("aarch64", "arm64"):
        vendor, micro = "arm", _ARM_PARTS.get(fields.get("CPU part", "").lower(), "generic")
        flags.add("neon")
    else:
        vendor, micro = "unknown", "generic"
    model = fields.get("model name") or platform.processor() or arch
    return CpuInfo(
        model=re.sub(r"\s+", " ", model).strip(),
        vendor=vendor,
        arch=arch,
        microarchitecture=micro,
        isa=tuple(flag for flag in ISA_FLAGS_OF_INTEREST if flag in flags),
        physical_cores=_physical_cores(),
        logical_cores=os.cpu_count() or 1,
        memory_gib=round(psutil.virtual_memory().total / 2**30, 1),
    )


def catalog_gpu_type(name: str) -> str | None:
    upper = name.upper()
    for marker, catalog_type in GPU_CATALOG_TYPES:
        if re.search(rf"\b{marker}\b", upper) or marker in upper.replace("NVIDIA ", "").split("-")[0].split():
            return catalog_type
    return None


def _query_gpus(smi: str) -> list[list[str]]:
    """nvidia-smi's rows: index, name, memory MiB, compute capability, driver.

    Drivers before R510 reject the compute_cap field; ask again without it, so the GPU is still listed (and the
    backends can say the driver is too old) instead of vanishing.
    """
    def query(fields: str, check: bool) -> subprocess.CompletedProcess:
        return subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=check)

    result = query("index,name,memory.total,compute_cap,driver_version", check=False)
    if result.returncode == 0:
        return [[p.strip() for p in line.split(",")] for line in result.stdout.strip().splitlines()]
    rows = [[p.strip() for p in line.split(",")]
            for line in query("index,name,memory.total,driver_version", check=True).stdout.strip().splitlines()]
    return [[*row[:3], "unknown", *row[3:]] for row in rows]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]": MIG slices, vGPUs, integrated GPUs
        return None


def detect_gpus() -> tuple[GpuInfo, ...]:
    """NVIDIA GPUs as nvidia-smi reports them; none when there is no driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        rows = _query_gpus(smi)
        header = subprocess.run([smi], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    gpus = []
    for parts in rows:
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        index, name, memory_mib, capability, driver = parts[:5]
        memory = _number(memory_mib)
        gpus.append(GpuInfo(int(index), name, round(memory / 1024, 1) if memory is not None else 0.0,
                            capability if re.fullmatch(r"\d+\.\d+", capability) else "unknown", driver,
                            cuda.group(1) if cuda else "unknown", catalog_gpu_type(name)))
    return tuple(gpus)


@lru_cache(maxsize=1)
def detect_targets() -> tuple[Target, ...]:
    """The CPU target, then one target per NVIDIA GPU."""
    cpu = detect_cpu()
    targets = [Target(id="cpu", kind="cpu", cpu=cpu)]
    targets += [Target(id=f"cuda:{gpu.index}", kind="cuda", cpu=cpu, gpu=gpu) for gpu in detect_gpus()]
    return tuple(targets)
