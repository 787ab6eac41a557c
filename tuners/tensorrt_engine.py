"""TensorRT plumbing for tuners/tensorrt.py: what is installed, how a configuration becomes an engine build, where
engines and timing caches live, the fp16 copy of a model, and running an engine on device buffers.

Nothing heavy is imported at module level: the parent process imports this without tensorrt, and the artifact
runner imports it with only numpy, tensorrt and one CUDA binding library (no onnx, no onnxruntime, no filelock).

Device memory, streams, events and CUDA graphs go through a small binding layer: NVIDIA's `cuda-python`
(`cuda.bindings.runtime`, or `cuda.cudart` before 12.6) when installed, else PyTorch's `torch.cuda` when PyTorch
was built with CUDA. cuda-python is what `advisor[tensorrt]` installs.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from advisor.model import ModelInfo
    from hwprofiles.targets import Target

INSTALL_HINT = "pip install 'advisor[tensorrt]'"
DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's own default
PRECISIONS = ("fp32", "tf32", "fp16", "int8", "int8+fp16")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
LAUNCH_ONLY_KEYS = ("cuda_graph",)  # configuration keys that do not change the engine itself
PLAN_FILE = "model.plan"
ENGINE_MANIFEST = "engine.json"
LARGE_MODEL_BYTES = 1_800_000_000  # protobuf cannot serialise 2 GiB: larger fp16 copies keep weights in a .data file


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the model or build an engine; the message says where and why."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


# --- what is installed ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtInstall:
    """The TensorRT stack as the parent process sees it, without creating a CUDA context."""

    tensorrt_version: str | None  # None when `import tensorrt` failed
    tensorrt_error: str | None  # why an installed tensorrt could not be imported (None when absent or fine)
    tensorrt_cuda_major: int | None  # the CUDA major its wheels were built for (tensorrt-cu12 -> 12), if known
    builder_fp16_flag: bool  # TensorRT < 11 still has BuilderFlag.FP16 (weakly typed networks)
    binding: str | None  # "cuda-python" or "torch": the library used for device memory
    binding_version: str | None
    binding_cuda: str | None  # CUDA runtime version the binding library was built for, "12.9"
    driver_cuda: str | None  # highest CUDA version the installed driver supports, as the binding reports it


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_distribution() -> tuple[str, int | None] | None:
    """The installed TensorRT wheel (name, CUDA major): tensorrt-cu12 -> ("tensorrt-cu12", 12)."""
    found = None
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        match = re.fullmatch(r"tensorrt-cu(\d+)(-bindings|-libs)?", name)
        if match:
            found = (f"tensorrt-cu{match.group(1)}", int(match.group(1)))
            if not match.group(2):
                break
    return found


def _cuda_version_text(encoded: int) -> str:
    """CUDA's integer versions: 12040 -> "12.4"."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def import_tensorrt():
    import tensorrt

    return tensorrt


@functools.lru_cache(maxsize=1)
def probe_install() -> TrtInstall:
    """Import tensorrt and the binding library (no CUDA context is created) and note their versions."""
    version, error, fp16_flag = None, None, False
    try:
        trt = import_tensorrt()
        version = str(trt.__version__)
        fp16_flag = hasattr(trt.BuilderFlag, "FP16")
    except ModuleNotFoundError as missing:
        if missing.name not in ("tensorrt", None):  # tensorrt is there but one of its own modules is not
            error = str(missing)
    except Exception as failure:  # missing shared libraries raise OSError or ImportError with the library name
        error = f"{type(failure).__name__}: {failure}".splitlines()[0][:300]
    dist = tensorrt_distribution()
    if version is None:  # nothing to bind to; importing torch only to find that out costs seconds
        return TrtInstall(None, error, dist[1] if dist else None, False, None, None, None, None)
    return TrtInstall(version, error, dist[1] if dist else None, fp16_flag, *probe_binding())


def probe_binding() -> tuple[str | None, str | None, str | None, str | None]:
    """(library, its version, the CUDA it was built for, the driver's CUDA) for the device-memory library."""
    try:
        runtime = CudaPython.runtime_module()
    except ImportError:
        try:
            import torch
        except ImportError:
            return None, None, None, None
        if torch.version.cuda is None:  # a CPU build
            return None, None, None, None
        return "torch", torch.__version__, torch.version.cuda, None
    _, encoded = runtime.cudaRuntimeGetVersion()
    binding_cuda = _cuda_version_text(encoded) if encoded else None
    _, encoded = runtime.cudaDriverGetVersion()
    driver_cuda = _cuda_version_text(encoded) if encoded else None  # 0: no driver could be loaded
    return "cuda-python", _dist_version("cuda-python", "cuda-bindings"), binding_cuda, driver_cuda


def _major_minor(text: str | None) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", str(text or ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def unavailable_reason(target: Target, install: TrtInstall) -> str | None:
    """Why TensorRT cannot run on this target with this installation, in words a user can act on; None if it can."""
    if target.kind != "cuda" or target.gpu is None:
        return "TensorRT runs only on NVIDIA GPUs"
    if install.tensorrt_version is None:
        if install.tensorrt_error:
            return (f"tensorrt is installed but cannot be loaded ({install.tensorrt_error}); "
                    f"reinstall it ({INSTALL_HINT})")
        return f"tensorrt not installed ({INSTALL_HINT})"
    if install.binding is None:
        return (f"cuda-python not installed ({INSTALL_HINT}, which installs it; PyTorch built with CUDA works too): "
                "TensorRT needs it for device memory and streams")
    gpu = target.gpu
    if install.binding == "cuda-python" and install.driver_cuda is None:
        return ("the NVIDIA driver's CUDA library (libcuda.so) cannot be loaded although nvidia-smi works; in a "
                "container, enable the 'compute' driver capability (NVIDIA_DRIVER_CAPABILITIES=compute,utility)")
    driver = _major_minor(gpu.cuda_version) or _major_minor(install.driver_cuda)
    if driver is not None:
        driver_text = f"{driver[0]}.{driver[1]}"
        if install.tensorrt_cuda_major is not None and driver[0] < install.tensorrt_cuda_major:
            return (f"CUDA driver too old: driver {gpu.driver_version} supports CUDA {driver_text}, tensorrt "
                    f"{install.tensorrt_version} is built for CUDA {install.tensorrt_cuda_major}; update the NVIDIA "
                    f"driver or install tensorrt-cu{driver[0]}")
        binding = _major_minor(install.binding_cuda)
        if binding is not None and driver[0] < binding[0]:
            return (f"CUDA driver too old: driver {gpu.driver_version} supports CUDA {driver_text}, "
                    f"{install.binding} {install.binding_version} is built for CUDA {install.binding_cuda}; update "
                    f"the NVIDIA driver or install {install.binding} for CUDA {driver[0]}")
    return None


def cuda_device_index(gpu_index: int, environ: Mapping[str, str] = os.environ) -> int:
    """The CUDA runtime's index of the GPU nvidia-smi lists at `gpu_index` (CUDA_DEVICE_ORDER=PCI_BUS_ID assumed).

    CUDA_VISIBLE_DEVICES renumbers the devices CUDA sees; nvidia-smi ignores it.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return gpu_index
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if str(gpu_index) in entries:
        return entries.index(str(gpu_index))
    if all(entry.isdigit() for entry in entries):
        raise CudaError(f"GPU {gpu_index} is hidden by CUDA_VISIBLE_DEVICES={visible}")
    return gpu_index  # UUIDs or MIG names: trust the order


# --- configurations -------------------------------------------------------------------------------------------


def has_qdq(op_histogram: Mapping[str, int]) -> bool:
    """A model with QuantizeLinear/DequantizeLinear nodes carries its own INT8 scales (explicit quantisation)."""
    return any(op_histogram.get(op, 0) for op in QDQ_OPS)


def baseline_config(qdq: bool) -> dict[str, Any]:
    """Strict fp32 (TF32 off, so the fp32 numerical check means something) at TensorRT's default optimisation
    level; a Q/DQ model runs in its own INT8 from the start, since its Q/DQ nodes are part of the graph."""
    return {"precision": "int8" if qdq else "fp32", "builder_optimization_level": DEFAULT_OPTIMIZATION_LEVEL,
            "cuda_graph": False}


@dataclass(frozen=True)
class BuildRecipe:
    """How one precision is obtained from the installed TensorRT."""

    strongly_typed: bool  # tensor types come from the model (always so from TensorRT 11 on)
    builder_flags: tuple[str, ...]  # BuilderFlag names to set (TensorRT 10's FP16/INT8)
    tf32: bool  # allow TF32 for fp32 tensors
    cast_model: bool  # build from the fp16-cast copy of the model


def build_recipe(precision: str, fp16_source: str | None, builder_fp16_flag: bool) -> BuildRecipe:
    """TensorRT 11 removed the FP16/INT8 builder flags: reduced precision must come from the model's own types
    (an fp16-cast copy, or Q/DQ nodes). TensorRT 10 still lets the builder pick fp16 per layer with BuilderFlag.FP16,
    which keeps fp32 where fp16 would not pay off."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown TensorRT precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision in ("fp32", "tf32"):
        return BuildRecipe(True, (), precision == "tf32", False)
    if precision == "int8":
        return BuildRecipe(True, (), False, False)
    source = fp16_source or ("builder-flag" if builder_fp16_flag else "cast-model")
    if source == "builder-flag":
        if not builder_fp16_flag:
            raise EngineBuildError("this TensorRT has no BuilderFlag.FP16 (removed in TensorRT 11); fp16 needs "
                                   "fp16_source 'cast-model'")
        return BuildRecipe(False, ("INT8", "FP16") if precision == "int8+fp16" else ("FP16",), True, False)
    if precision == "int8+fp16":
        raise EngineBuildError("int8+fp16 needs TensorRT 10's builder flags; cast Q/DQ models are not supported")
    if source != "cast-model":
        raise ValueError(f"unknown fp16_source {source!r}")
    return BuildRecipe(True, (), True, True)


Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def profile_shapes(info: ModelInfo, batch_size: int) -> Profile:
    """Optimisation-profile (min, opt, max) per input: tuned for `batch_size`, accepting any smaller batch."""
    top = info.shapes_at(batch_size)
    low = info.shapes_at(1) if info.batch_axis else top
    return {name: (tuple(low[name]), tuple(shape), tuple(shape)) for name, shape in top.items()}


# --- where things live ----------------------------------------------------------------------------------------


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "unknown"


def timing_cache_path(cache_dir: Path, gpu_name: str, compute_capability: str, trt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version: timings from another GPU or release do not apply."""
    key = f"{slug(gpu_name)}-sm{slug(compute_capability).replace('.', '')}-trt{slug(trt_version)}"
    return Path(cache_dir) / "tensorrt" / key / "timing.cache"


def engine_path(workdir: Path, config: Mapping[str, Any], batch_size: int, model_sha256: str,
                trt_version: str) -> Path:
    """The serialised engine for one configuration at one batch size of one model, built by one TensorRT.

    Settings that only change how the engine is launched (a CUDA graph) share the engine.
    """
    built = {key: value for key, value in config.items() if key not in LAUNCH_ONLY_KEYS}
    blob = json.dumps({"config": built, "model": model_sha256, "trt": trt_version}, sort_keys=True)
    return Path(workdir) / "engines" / f"{hashlib.sha256(blob.encode()).hexdigest()[:16]}-b{batch_size}.plan"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(path)


# --- the fp16 copy of a model ---------------------------------------------------------------------------------


def _consumed_names(node) -> list[str]:
    """Inputs of a node, including outer-scope names read inside its subgraphs (If/Loop/Scan bodies)."""
    names = list(node.input)
    for attribute in node.attribute:
        graphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names += _consumed_names(inner)
    return names


def topologically_sort(graph) -> None:
    """Reorder graph.node so every node follows its producers, keeping the original order where it is free.

    onnxruntime's fp16 converter appends its input Casts at the end of the node list; ONNX requires the order.
    """
    import heapq

    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    waiting_on = [set() for _ in nodes]
    consumers: list[list[int]] = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        for name in _consumed_names(node):
            source = producer.get(name)
            if source is not None and source != index and source not in waiting_on[index]:
                waiting_on[index].add(source)
                consumers[source].append(index)
    ready = [index for index, deps in enumerate(waiting_on) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers[index]:
            waiting_on[consumer].discard(index)
            if not waiting_on[consumer]:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise EngineBuildError("the fp16 copy of the model has a cycle; it cannot be sorted")
    sorted_nodes = [nodes[index] for index in order]
    copies = []
    for node in sorted_nodes:
        copy = type(node)()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)


def fp16_model_path(model_path: Path, workdir: Path) -> Path:
    """An fp16 copy of the model with fp32 inputs and outputs, made once per run folder.

    TensorRT 11 builds every network strongly typed, so this copy is how it runs in fp16 at all.
    """
    target = Path(workdir) / f"{Path(model_path).stem}.fp16.onnx"
    if target.exists():
        return target
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(model_path))
    converted = convert_float_to_float16(model, keep_io_types=True)
    topologically_sort(converted.graph)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.partial.onnx")
    large = sum(len(t.raw_data) for t in converted.graph.initializer) > LARGE_MODEL_BYTES
    onnx.save_model(converted, str(partial), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=f"{target.name}.data")
    partial.replace(target)
    return target


# --- parsing and building -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParserProblem:
    node_index: int
    node_name: str
    operator: str
    description: str


def parser_problems(parser) -> list[ParserProblem]:
    problems = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        problems.append(ParserProblem(int(error.node()), str(error.node_name() or ""),
                                      str(error.node_operator() or ""), str(error.desc()).strip()))
    return problems


def format_parser_problems(problems: Sequence[ParserProblem], model_path: Path) -> str:
    """One line naming the failing node and operator first, since that is what a user can act on."""
    if not problems:
        return f"TensorRT's ONNX parser rejected {Path(model_path).name} without saying why"
    first = problems[0]
    where = (f"node {first.node_name!r} ({first.operator or 'unknown operator'}, #{first.node_index})"
             if first.node_index >= 0 else "the graph")
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"TensorRT's ONNX parser failed at {where} of {Path(model_path).name}: {first.description}{more}"


@dataclass(frozen=True)
class BuildRequest:
    model_path: Path
    recipe: BuildRecipe
    optimization_level: int
    profile: Profile
    timing_cache: Path


def make_logger(trt):
    """A TensorRT logger that keeps warnings and errors, so a failed build can say why."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(f"{getattr(severity, 'name', severity)}: {msg}")

        def errors(self) -> str:
            found = [m for m in self.messages if not m.startswith("WARNING")]
            return "; ".join(found[-3:]) or "; ".join(self.messages[-3:]) or "no message"

    return CollectingLogger()


def _load_timing_cache(config, path: Path):
    data = b""
    if path.exists():
        from filelock import FileLock

        with FileLock(str(path) + ".lock", timeout=120):
            data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None:  # unreadable (truncated, another TensorRT): start empty rather than fail the build
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return len(data)


def _save_timing_cache(config, path: Path) -> None:
    """Merge what this build learned into the cache on disk (other processes may have added to it meanwhile)."""
    from filelock import FileLock

    cache = config.get_timing_cache()
    if cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=120):
        if path.exists():
            on_disk = config.create_timing_cache(path.read_bytes())
            if on_disk is not None:
                cache.combine(on_disk, False)
        write_atomic(path, bytes(cache.serialize()))


def build_plan(trt, request: BuildRequest) -> tuple[bytes, dict[str, Any]]:
    """Parse the ONNX file and build a serialised engine; returns the plan and facts for the trial's details."""
    logger = make_logger(trt)
    try:
        builder = trt.Builder(logger)
    except Exception as error:  # TensorRT returns a null builder when CUDA cannot be initialised
        raise EngineBuildError(f"TensorRT could not create a builder ({logger.errors()}; {error})") from None
    legacy = hasattr(trt.BuilderFlag, "FP16")
    flags = 0
    if legacy and request.recipe.strongly_typed:  # TensorRT 11 is always strongly typed and ignores the flag
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request.model_path)):
        raise EngineBuildError(format_parser_problems(parser_problems(parser), request.model_path))
    config = builder.create_builder_config()
    config.builder_optimization_level = int(request.optimization_level)
    if request.recipe.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    for name in request.recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    dynamic = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if tensor.is_shape_tensor:
            raise EngineBuildError(f"input {tensor.name!r} is a shape tensor, which advisor cannot give a profile")
        if any(int(dim) < 0 for dim in tensor.shape):
            if tensor.name not in request.profile:
                raise EngineBuildError(f"input {tensor.name!r} has dynamic shape {tuple(tensor.shape)} and no "
                                       "concrete shape was given for it")
            low, opt, high = request.profile[tensor.name]
            profile.set_shape(tensor.name, low, opt, high)
            dynamic[tensor.name] = {"min": list(low), "opt": list(opt), "max": list(high)}
    if dynamic:
        config.add_optimization_profile(profile)
    cache_bytes = _load_timing_cache(config, request.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"TensorRT could not build the engine: {logger.errors()}")
    _save_timing_cache(config, request.timing_cache)
    facts = {"profile": dynamic, "timing_cache": str(request.timing_cache), "timing_cache_bytes_before": cache_bytes,
             "strongly_typed": request.recipe.strongly_typed or not legacy,
             "builder_flags": list(request.recipe.builder_flags) + (["TF32"] if request.recipe.tf32 else [])}
    return bytes(plan), facts


def deserialize(trt, plan: bytes):
    """(runtime, engine); the runtime must outlive the engine."""
    logger = make_logger(trt)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineBuildError(f"TensorRT could not load the engine plan: {logger.errors()}")
    return runtime, engine


def np_dtype_name(trt, dtype) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # bf16, fp8, int4: no numpy equivalent
        return str(dtype).rsplit(".", 1)[-1].lower()


# --- plans are not portable -----------------------------------------------------------------------------------


def plan_problems(built_for: Mapping[str, Any], trt_version: str, compute_capability: str) -> list[str]:
    """Why a plan built on one machine cannot run on this one (empty when it can)."""
    problems = []
    if built_for.get("tensorrt_version") != trt_version:
        problems.append(f"the plan was built with TensorRT {built_for.get('tensorrt_version')}, this is {trt_version}")
    if str(built_for.get("compute_capability")) != str(compute_capability):
        problems.append(f"the plan was built for compute capability {built_for.get('compute_capability')} "
                        f"({built_for.get('gpu_name')}), this GPU has {compute_capability}")
    return problems


# --- CUDA binding layer ---------------------------------------------------------------------------------------


class CudaBinding(ABC):
    """The few CUDA runtime services TensorRT's Python API leaves to the caller."""

    name: str

    @abstractmethod
    def set_device(self, index: int) -> None: ...

    @abstractmethod
    def device_properties(self, index: int) -> dict[str, Any]:
        """{"name", "compute_capability" ("8.6"), "memory_gib"}."""

    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, pointer: int) -> None: ...

    @abstractmethod
    def create_stream(self) -> Any: ...

    @abstractmethod
    def stream_handle(self, stream: Any) -> int: ...

    @abstractmethod
    def copy_to_device(self, pointer: int, array: np.ndarray, stream: Any) -> None:
        """Enqueue a host-to-device copy; `array` must stay alive until the stream is synchronised."""

    @abstractmethod
    def copy_to_host(self, array: np.ndarray, pointer: int, stream: Any) -> None: ...

    @abstractmethod
    def synchronize(self, stream: Any) -> None: ...

    @abstractmethod
    def elapsed_ms(self, run: Callable[[], None], stream: Any) -> float:
        """GPU time of what `run` enqueues on `stream`, between two CUDA events."""

    @abstractmethod
    def capture(self, run: Callable[[], None], stream: Any) -> Any:
        """Record what `run` enqueues on `stream` into an executable CUDA graph."""

    @abstractmethod
    def launch(self, graph: Any, stream: Any) -> None: ...

    @abstractmethod
    def versions(self) -> dict[str, str]: ...


class CudaPython(CudaBinding):
    """NVIDIA's cuda-python runtime bindings (every call returns (error, value...))."""

    name = "cuda-python"

    @staticmethod
    def runtime_module():
        try:
            from cuda.bindings import runtime
        except ImportError:
            from cuda import cudart as runtime  # cuda-python < 12.6
        return runtime

    def __init__(self):
        self.rt = self.runtime_module()
        self._events = None

    def _check(self, result, what: str):
        result = result if isinstance(result, tuple) else (result,)
        error, values = result[0], result[1:]
        if error != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(error)
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise CudaError(f"{what} failed: {getattr(error, 'name', error)} ({text})")
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    def set_device(self, index):
        self._check(self.rt.cudaSetDevice(index), f"cudaSetDevice({index})")

    def device_properties(self, index):
        props = self._check(self.rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.totalGlobalMem / 2**30, 1)}

    def malloc(self, nbytes):
        return int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})"))

    def free(self, pointer):
        self._check(self.rt.cudaFree(pointer), "cudaFree")

    def create_stream(self):
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream):
        return int(stream)

    def copy_to_device(self, pointer, array, stream):
        if array.nbytes:
            self._check(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                        "cudaMemcpyAsync (host to device)")

    def copy_to_host(self, array, pointer, stream):
        if array.nbytes:
            self._check(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes,
                                                self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                        "cudaMemcpyAsync (device to host)")

    def synchronize(self, stream):
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def elapsed_ms(self, run, stream):
        if self._events is None:
            self._events = (self._check(self.rt.cudaEventCreate(), "cudaEventCreate"),
                            self._check(self.rt.cudaEventCreate(), "cudaEventCreate"))
        start, end = self._events
        self._check(self.rt.cudaEventRecord(start, stream), "cudaEventRecord")
        run()
        self._check(self.rt.cudaEventRecord(end, stream), "cudaEventRecord")
        self._check(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def capture(self, run, stream):
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            run()
        finally:
            graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture (the engine cannot be "
                                                                      "captured into a CUDA graph)")
        executable = self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        return graph, executable  # the graph is kept with its executable

    def launch(self, graph, stream):
        self._check(self.rt.cudaGraphLaunch(graph[1], stream), "cudaGraphLaunch")

    def versions(self):
        runtime = self._check(self.rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")
        driver = self._check(self.rt.cudaDriverGetVersion(), "cudaDriverGetVersion")
        return {"cuda-python": _dist_version("cuda-python", "cuda-bindings") or "unknown",
                "cuda_runtime": _cuda_version_text(runtime), "cuda_driver": _cuda_version_text(driver)}


class TorchCuda(CudaBinding):
    """PyTorch's CUDA runtime, for hosts that have a CUDA build of PyTorch but not cuda-python."""

    name = "torch"

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise CudaError(f"PyTorch {torch.__version__} sees no CUDA device")
        self.torch = torch
        self._tensors: dict[int, Any] = {}  # device pointer -> the tensor that owns it

    def set_device(self, index):
        self.torch.cuda.set_device(index)

    def device_properties(self, index):
        props = self.torch.cuda.get_device_properties(index)
        return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1)}

    def malloc(self, nbytes):
        tensor = self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8, device="cuda")
        self._tensors[tensor.data_ptr()] = tensor
        return tensor.data_ptr()

    def free(self, pointer):
        self._tensors.pop(pointer, None)

    def create_stream(self):
        return self.torch.cuda.Stream()

    def stream_handle(self, stream):
        return int(stream.cuda_stream)

    def _bytes(self, array: np.ndarray):
        return self.torch.from_numpy(array.reshape(-1).view(np.uint8))

    def copy_to_device(self, pointer, array, stream):
        if array.nbytes:
            with self.torch.cuda.stream(stream):
                self._tensors[pointer][: array.nbytes].copy_(self._bytes(array), non_blocking=True)

    def copy_to_host(self, array, pointer, stream):
        if array.nbytes:
            with self.torch.cuda.stream(stream):
                self._bytes(array).copy_(self._tensors[pointer][: array.nbytes], non_blocking=True)

    def synchronize(self, stream):
        stream.synchronize()

    def elapsed_ms(self, run, stream):
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record(stream)
        run()
        end.record(stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    def capture(self, run, stream):
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph, stream=stream):
            run()
        return graph

    def launch(self, graph, stream):
        with self.torch.cuda.stream(stream):
            graph.replay()

    def versions(self):
        return {"torch": self.torch.__version__, "cuda_runtime": str(self.torch.version.cuda)}


def load_binding() -> CudaBinding:
    """cuda-python when installed, else a CUDA build of PyTorch."""
    try:
        return CudaPython()
    except ImportError:
        pass
    try:
        return TorchCuda()
    except ImportError:
        raise CudaError(f"neither cuda-python nor a CUDA build of PyTorch is installed ({INSTALL_HINT})") from None


# --- running an engine ----------------------------------------------------------------------------------------


class EngineRunner:
    """One engine, one execution context, its device buffers and one stream."""

    def __init__(self, trt, runtime, engine, binding: CudaBinding, output_names: Sequence[str] | None = None):
        self.trt = trt
        self.runtime = runtime  # kept alive as long as the engine
        self.engine = engine
        self.binding = binding
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineBuildError("TensorRT could not create an execution context (out of device memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        engine_outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if output_names is not None and sorted(output_names) == sorted(engine_outputs):
            engine_outputs = list(output_names)  # the model's output order, not the engine's
        self.output_names = engine_outputs
        try:
            self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        except TypeError:
            raise EngineBuildError("an engine input or output has a type numpy cannot hold (bf16, fp8, int4): "
                                   f"{[np_dtype_name(trt, engine.get_tensor_dtype(n)) for n in names]}") from None
        self.stream = binding.create_stream()
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._host_inputs: dict[str, np.ndarray] = {}
        self._host_outputs: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(name, (0, -1))
        if nbytes > capacity:
            if capacity >= 0:
                self.binding.free(pointer)
            pointer = self.binding.malloc(nbytes)
            self._buffers[name] = (pointer, max(nbytes, 1))
        return pointer

    def prepare(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Set input shapes, size the device buffers and point the context at them (no copies yet)."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ValueError(f"missing inputs {missing}; the engine takes {self.input_names}")
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            if not self.context.set_input_shape(name, array.shape):
                raise ValueError(f"input {name!r} of shape {array.shape} is outside the engine's optimisation "
                                 "profile (engines accept batch sizes up to the one they were built for)")
            self._host_inputs[name] = array
            self.context.set_tensor_address(name, self._buffer(name, array.nbytes))
        for name in self.output_names:
            shape = tuple(int(dim) for dim in self.context.get_tensor_shape(name))
            if any(dim < 0 for dim in shape):
                raise EngineBuildError(f"output {name!r} has a data-dependent shape {shape}, which advisor's "
                                       "TensorRT runner does not support")
            host = np.empty(shape, dtype=self.dtypes[name])
            self._host_outputs[name] = host
            self.context.set_tensor_address(name, self._buffer(name, host.nbytes))

    def upload(self) -> None:
        for name in self.input_names:
            self.binding.copy_to_device(self._buffers[name][0], self._host_inputs[name], self.stream)

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.binding.stream_handle(self.stream)):
            raise RuntimeError("TensorRT could not enqueue the inference")

    def download(self) -> list[np.ndarray]:
        """Enqueue the output copies; the arrays are valid after `synchronize`."""
        for name in self.output_names:
            self.binding.copy_to_host(self._host_outputs[name], self._buffers[name][0], self.stream)
        return [self._host_outputs[name] for name in self.output_names]

    def synchronize(self) -> None:
        self.binding.synchronize(self.stream)

    def close(self) -> None:
        for pointer, _ in getattr(self, "_buffers", {}).values():
            try:
                self.binding.free(pointer)
            except Exception:  # freeing at interpreter exit can fail once CUDA is torn down; nothing to do then
                pass
        getattr(self, "_buffers", {}).clear()

    def __del__(self):
        self.close()


def predictor(runner: EngineRunner) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    """feeds -> outputs on the host; one call at a time (the artifact server is threaded, a context is not)."""
    lock = threading.Lock()

    def predict(feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with lock:
            runner.prepare(feeds)
            runner.upload()
            runner.enqueue()
            outputs = runner.download()
            runner.synchronize()
            return [output.copy() for output in outputs]

    return predict
