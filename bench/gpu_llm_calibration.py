"""Step times of a real-dimension LLM in plain PyTorch on one GPU, for fitting advisor.llm.perf's efficiency factors.

    python bench/gpu_llm_calibration.py --out results/                       # the real run, < 6 min on an H100/H200
    python bench/gpu_llm_calibration.py --out /tmp/x --smoke --device cpu    # tiny dimensions, what the tests run

Needs only torch, numpy and (for the model parts) transformers: no network, no pydantic, no yaml. Builds a
random-initialised model from a Hugging Face config (default: the Llama 3.1 8B architecture) in bf16 directly on the
device and measures, each part guarded (its error is recorded and the run goes on) and the whole under a time
budget (--max-seconds, checked before every part and every timed point; a JSON with what finished is rewritten
after every part, so a time-out still leaves data):

- matmul:    bf16 torch.matmul at M=N=K=8192 and at a decode-like shape (max batch x hidden -> intermediate);
             fp8 e4m3 torch._scaled_mm (per-tensor scales, bf16 out) at 8192^3 where compute capability >= 8.9.
             TFLOP/s = 2 M N K / time.
- bandwidth: a device-to-device copy of a 2 GiB float32 buffer (GB/s counts read + write bytes: 2 x 2 GiB) and a
             read-only sum of the same buffer (GB/s counts the bytes read); hbm_bandwidth_gbs is the copy figure.
- prefill:   one forward of 1 prompt x P tokens through transformers' LlamaModel (causal SDPA, KV written to its
             default cache) and lm_head on the last token only (what a serving engine computes).
- decode:    one new token for each of B sequences whose static KV cache holds exactly C tokens (C - 1 earlier
             ones, random values, plus the new one): the model's own modules (RMSNorm, q/k/v/o projections, MLP,
             lm_head) driven by a KV-cached step of this script, attention through F.scaled_dot_product_attention
             with the query heads of each KV group stacked (exact for one query token, no repeated K/V), greedy
             argmax; eager, and replayed from a CUDA graph of the same step (torch.cuda.CUDAGraph).

Timing: CUDA events around each call after a synchronise (so an eager step's launch overhead counts), warm-up calls
first, the median of --repeats samples and the distribution-free 95 % interval of the median from order statistics.
Output: DIR/gpu_llm_calibration-<gpu-slug>-<date>.json, schema advisor.gpu_llm_calibration/v1, holding one
advisor.llm.measurement/v1 record per decode mode (eager, cudagraph); docs/gpu_llm_calibration.md has the schema.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

STARTED = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from advisor.llm.architecture import LlmArchitecture, load_architecture  # noqa: E402  (numpy + stdlib only)
from advisor.llm.measurement_record import Hardware, LlmMeasurement, StepTiming  # noqa: E402
from advisor.llm.perf import ModelWork, gpu_key, load_priors, model_work  # noqa: E402
from advisor.llm.precision import precision_named  # noqa: E402

SCHEMA = "advisor.gpu_llm_calibration/v1"
SOURCE = "bench/gpu_llm_calibration.py"
DEFAULT_CONFIG = REPO / "examples" / "llm" / "llama-3.1-8b" / "config.json"
PARTS = ("matmul", "bandwidth", "model", "prefill", "decode", "cudagraph")
SKIPPABLE = ("matmul", "bandwidth", "prefill", "decode", "cudagraph")
DTYPES = {"bf16": "bfloat16"}
FP8_MIN_CAPABILITY = (8, 9)
GIB = 1024 ** 3

# --smoke: a 2-layer llama small enough for a CPU test in seconds (head_dim 64, grouped-query attention kept)
SMOKE_CONFIG = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                "num_key_value_heads": 2, "vocab_size": 512, "bos_token_id": 0, "eos_token_id": 1}


@dataclass(frozen=True)
class Sizes:
    """Microbenchmark sizes: real ones on a GPU, tiny ones for --smoke."""

    matmul: int  # M = N = K of the square matmuls
    bandwidth_bytes: int  # bytes of each buffer of the copy
    warmup: int


GPU_SIZES = Sizes(matmul=8192, bandwidth_bytes=2 * GIB, warmup=3)
SMOKE_SIZES = Sizes(matmul=256, bandwidth_bytes=16 * 1024 ** 2, warmup=2)


@dataclass(frozen=True)
class Settings:
    out: Path
    config: Path
    device: str  # "cuda" | "cpu"
    dtype: str  # "bf16"
    prompt_lengths: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    contexts: tuple[int, ...]
    repeats: int
    max_seconds: float
    smoke: bool
    skip: frozenset[str]

    def to_dict(self) -> dict:
        return {"out": str(self.out), "config": str(self.config), "device": self.device, "dtype": self.dtype,
                "prompt_lengths": list(self.prompt_lengths), "batch_sizes": list(self.batch_sizes),
                "contexts": list(self.contexts), "repeats": self.repeats, "max_seconds": self.max_seconds,
                "smoke": self.smoke, "skip": sorted(self.skip)}


# ------------------------------------------------------------------------------------------------ arguments


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage block) and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def _skip_list(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}; expected some of "
                                         f"{','.join(SKIPPABLE)}")
    return names


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = OneLineParser(prog="gpu_llm_calibration.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON (created if missing)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="a llama Hugging Face config.json")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--prompt-lengths", type=_positive_ints, help="prefill prompt tokens (default "
                        "128,512,2048,8192; --smoke 16,64)")
    parser.add_argument("--batch-sizes", type=_positive_ints, help="decode batches (default 1,8,32,64; --smoke 1,4)")
    parser.add_argument("--contexts", type=_positive_ints, help="decode contexts (default 512,2048,8192; "
                        "--smoke 32,128)")
    parser.add_argument("--repeats", type=int, help="timed samples per point (default 20; --smoke 5; >= 3)")
    parser.add_argument("--max-seconds", type=float, default=330.0,
                        help="time budget from the start, checked before every part and point (default 330)")
    parser.add_argument("--smoke", action="store_true", help="tiny dimensions (2 layers, hidden 256) for tests")
    parser.add_argument("--skip", type=_skip_list, default=frozenset(), help=f"parts to leave out: "
                        f"{','.join(SKIPPABLE)} (decode also leaves out cudagraph)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 3:
        parser.error(f"--repeats must be at least 3 (an interval of the median needs samples), got {args.repeats}")
    if not args.max_seconds > 0:
        parser.error(f"--max-seconds must be positive, got {args.max_seconds}")
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file (give a Hugging Face config.json)")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: exists and is not a folder")
    try:
        config = json.loads(args.config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        parser.error(f"--config {args.config}: cannot read it as JSON ({type(error).__name__}: {error})")
    if not isinstance(config, dict) or config.get("model_type") != "llama":
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        parser.error(f"--config {args.config}: model_type is {found!r}; this script builds llama models only")
    smoke = args.smoke
    skip = args.skip | ({"cudagraph"} if "decode" in args.skip else frozenset())
    return Settings(out=args.out, config=args.config, device=args.device, dtype=args.dtype,
                    prompt_lengths=args.prompt_lengths or ((16, 64) if smoke else (128, 512, 2048, 8192)),
                    batch_sizes=args.batch_sizes or ((1, 4) if smoke else (1, 8, 32, 64)),
                    contexts=args.contexts or ((32, 128) if smoke else (512, 2048, 8192)),
                    repeats=args.repeats or (5 if smoke else 20), max_seconds=args.max_seconds, smoke=smoke,
                    skip=skip)


# ------------------------------------------------------------------------------------------------ statistics


def median_interval(samples: list[float]) -> tuple[float, tuple[float, float]]:
    """The median and a distribution-free 95 % interval of it: order statistics x_(k) .. x_(n+1-k) with k the
    largest rank whose P(Binomial(n, 1/2) <= k - 1) <= 0.025 (coverage >= 95 %; for n <= 5 no rank qualifies and
    the interval is [min, max], coverage 1 - 2^(1-n))."""
    xs = sorted(samples)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")

    def below(k: int) -> float:  # P(Binomial(n, 1/2) <= k)
        return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n

    k = 1
    while k < (n + 1) // 2 and below(k) <= 0.025:
        k += 1
    return statistics.median(xs), (xs[k - 1], xs[n - k])


def step_timing(kind: str, batch: int, prompt_tokens: int, context: int, samples_ms: list[float]) -> StepTiming:
    median, interval = median_interval(samples_ms)
    return StepTiming(kind, batch, prompt_tokens, context, median, interval, len(samples_ms))


# ------------------------------------------------------------------------------------------------ the run record


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else type(error).__name__)[:500]


def log(message: str) -> None:
    now = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{now} +{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


@dataclass
class Run:
    """Everything measured so far; `write` rewrites the JSON (atomically) with it."""

    settings: Settings
    date: str
    environment: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    microbenchmarks: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    steps: dict = field(default_factory=lambda: {"prefill": [], "eager": [], "cudagraph": []})
    notes: dict = field(default_factory=dict)  # mode -> notes on how its steps were measured
    work: ModelWork | None = None
    model_name: str = ""
    model_slug: str = ""  # the config's folder name, for record ids
    complete: bool = False
    path: Path | None = None

    def elapsed(self) -> float:
        return time.monotonic() - STARTED

    def over_budget(self) -> str | None:
        """None while time is left, else the reason a part or point is not started."""
        elapsed = self.elapsed()
        if elapsed < self.settings.max_seconds:
            return None
        return f"time budget: {elapsed:.1f} s elapsed of --max-seconds {self.settings.max_seconds:g}"

    def error(self, part: str, error: BaseException, **where) -> None:
        tail = traceback.format_exception(type(error), error, error.__traceback__)
        self.errors.append({"part": part, **where, "error": _one_line(error),
                            "traceback": "".join(tail)[-3000:]})
        log(f"{part}: ERROR {_one_line(error)}" + (f" at {where}" if where else ""))

    def skip(self, part: str, reason: str, **where) -> None:
        self.skipped.append({"part": part, **where, "reason": reason})
        log(f"{part}: skipped{f' {where}' if where else ''}: {reason}")

    def mark(self, part: str, status: str, reason: str, seconds: float = 0.0) -> None:
        """A part's outcome: done | error | skipped (asked for by --skip, or not applicable to the device) |
        not run (the time budget ran out, or the model it needs is missing)."""
        self.parts[part] = {"status": status, "seconds": round(seconds, 2), **({"reason": reason} if reason else {})}
        if status in ("skipped", "not run"):
            self.skip(part, reason)

    def finished(self) -> bool:
        """Every part asked for ran to its end without an error (decode points skipped because they do not fit in
        memory are not errors)."""
        return all(p in self.parts for p in PARTS) and \
            all(p["status"] in ("done", "skipped") for p in self.parts.values()) and \
            not self.errors and not self.measurements()[1]

    def measurements(self) -> tuple[list[dict], list[dict]]:
        """(records, problems): one advisor.llm.measurement/v1 record per decode mode that has steps."""
        records, problems = [], []
        if self.work is None:
            return records, problems
        hardware, why = hardware_record(self)
        for mode in ("eager", "cudagraph"):
            steps = self.steps["prefill"] + self.steps[mode]
            if not self.steps[mode] and not (mode == "eager" and self.steps["prefill"]):
                continue
            if hardware is None:
                problems.append({"part": "measurements", "error": f"no {mode} record: {why}"})
                continue
            device = self.environment.get("gpu", {}) or {}
            hw_slug = _slug(device.get("name") or "cpu")
            record = LlmMeasurement(
                id=f"pytorch-{self.model_slug}-{self.settings.dtype}-{mode}-{hw_slug}-{self.date}",
                date=self.date, source=SOURCE, hardware=hardware, engine="pytorch",
                engine_version=self.environment["versions"]["torch"], versions=dict(self.environment["versions"]),
                model=self.model_name, work=self.work, precision=self.settings.dtype, tensor_parallel=1,
                steps=tuple(steps), notes=tuple(self.notes.get("prefill", []) + self.notes.get(mode, [])))
            records.append(record.to_dict())
        return records, problems

    def document(self) -> dict:
        records, problems = self.measurements()
        return {"schema": SCHEMA, "complete": self.complete, "date": self.date, "source": SOURCE,
                **self.environment, "settings": self.settings.to_dict(), "model": self.model,
                "microbenchmarks": self.microbenchmarks, "parts": self.parts, "errors": self.errors + problems,
                "skipped": self.skipped, "wall_s": round(self.elapsed(), 2), "measurements": records}

    def write(self) -> Path:
        self.settings.out.mkdir(parents=True, exist_ok=True)
        if self.path is None:
            slug = _slug((self.environment.get("gpu") or {}).get("name") or "cpu")
            self.path = self.settings.out / f"gpu_llm_calibration-{slug}-{self.date}.json"
        text = json.dumps(self.document(), indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".partial")
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.replace(tmp, self.path)
        return self.path


def run_part(run: Run, name: str, body) -> object:
    """Run one part unless skipped or out of time; record its status, error and seconds; rewrite the JSON."""
    if name in run.settings.skip:
        run.mark(name, "skipped", "--skip")
        return None
    if (reason := run.over_budget()) is not None:
        run.mark(name, "not run", reason)
        run.write()
        return None
    log(f"{name}: start")
    began = time.monotonic()
    result, status = None, "done"
    try:
        result = body()
    except Exception as error:  # a part's failure is data; the next part still runs
        run.error(name, error)
        status = "error"
        _release_memory(run.settings.device)
    run.mark(name, status, "", time.monotonic() - began)
    run.write()
    return result


def _release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ environment


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _driver_version() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def environment(device: str) -> dict:
    """gpu, host and versions blocks of the JSON (gpu is null on a CPU run)."""
    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "driver": None,
                "triton": _version("triton"), "transformers": _version("transformers"), "numpy": _version("numpy"),
                "python": platform.python_version()}
    gpu = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        major, minor = torch.cuda.get_device_capability(0)
        gpu = {"name": torch.cuda.get_device_name(0), "memory_gib": round(props.total_memory / GIB, 2),
               "compute_capability": f"{major}.{minor}", "count": torch.cuda.device_count()}
        versions["driver"] = _driver_version() or (
            f"unknown (no nvidia-smi); device properties: {props}")
        versions["cudnn"] = torch.backends.cudnn.version()
    return {"device": device, "gpu": gpu, "host": {"cpu": _cpu_name(), "cores": os.cpu_count()},
            "versions": versions}


# ------------------------------------------------------------------------------------------------ timing


def time_ms(fn, *, device: str, warmup: int, samples: int) -> list[float]:
    """Milliseconds of `samples` calls of fn, each timed alone after a synchronise: CUDA events on a GPU (the
    event pair brackets the launches too, so launch-bound work counts), perf_counter on a CPU."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(samples):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(float(start.elapsed_time(end)))
    else:
        for _ in range(samples):
            began = time.perf_counter()
            fn()
            times.append((time.perf_counter() - began) * 1e3)
    return times


def _summary(samples_ms: list[float]) -> dict:
    median, (lo, hi) = median_interval(samples_ms)
    return {"ms": median, "ms_interval": [lo, hi], "samples": len(samples_ms)}


# ------------------------------------------------------------------------------------------------ microbenchmarks


def bf16_matmul(device: str, m: int, n: int, k: int, *, repeats: int, warmup: int) -> dict:
    """torch.matmul of (m x k) @ (k x n) bf16, bf16 out: TFLOP/s = 2 m n k / median time; GB/s counts the two
    inputs read and the output written once (what a memory-bound skinny matmul moves at least)."""
    import torch

    a = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    b = torch.randn(k, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(m, n, device=device, dtype=torch.bfloat16)
    samples = time_ms(lambda: torch.matmul(a, b, out=out), device=device, warmup=warmup, samples=repeats)
    result = {"shape_mnk": [m, n, k], **_summary(samples)}
    result["tflops"] = 2.0 * m * n * k / (result["ms"] * 1e-3) / 1e12
    result["gbs"] = 2.0 * (m * k + k * n + m * n) / (result["ms"] * 1e-3) / 1e9
    return result


def fp8_matmul(device: str, size: int, *, repeats: int, warmup: int, fast_accum: bool = False) -> dict:
    """torch._scaled_mm of e4m3 (size x size) @ e4m3 (size x size, column-major as cuBLASLt wants it), per-tensor
    float32 scales of 1, bf16 out: TFLOP/s = 2 size^3 / median time."""
    import torch

    a = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(size, size, device=device).to(torch.float8_e4m3fn).t()  # column-major view
    scale = torch.tensor(1.0, device=device, dtype=torch.float32)

    def call():
        out = torch._scaled_mm(a, b, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16,
                               use_fast_accum=fast_accum)
        return out[0] if isinstance(out, tuple) else out  # torch < 2.4 returned (out, amax)

    samples = time_ms(call, device=device, warmup=warmup, samples=repeats)
    result = {"shape_mnk": [size, size, size], "use_fast_accum": fast_accum, **_summary(samples)}
    result["tflops"] = 2.0 * size ** 3 / (result["ms"] * 1e-3) / 1e12
    return result


def matmul_part(run: Run, sizes: Sizes, arch: LlmArchitecture | None) -> None:
    import torch

    device, repeats = run.settings.device, run.settings.repeats
    bench = run.microbenchmarks
    n = sizes.matmul
    square = bf16_matmul(device, n, n, n, repeats=repeats, warmup=sizes.warmup)
    bench["bf16_matmul_tflops"] = square["tflops"]
    bench["bf16_matmul"] = {"square": square}
    if arch is not None:
        m = max(run.settings.batch_sizes)
        bench["bf16_matmul"]["decode_shape"] = bf16_matmul(device, m, arch.intermediate_size, arch.hidden_size,
                                                           repeats=repeats, warmup=sizes.warmup)
    if device == "cpu":
        bench["bf16_matmul"]["note"] = f"CPU fallback at {n}^3 (smoke sizes): not a GPU figure"
    log(f"matmul: bf16 {n}^3 {square['tflops']:.1f} TFLOP/s")
    run.write()
    capability = torch.cuda.get_device_capability(0) if device == "cuda" else None
    if capability is None or capability < FP8_MIN_CAPABILITY:
        where = "device is cpu" if capability is None else f"this GPU is {capability[0]}.{capability[1]}"
        reason = f"unsupported: fp8 torch._scaled_mm needs a CUDA GPU of compute capability >= 8.9; {where}"
        bench["fp8_matmul_tflops"] = None
        bench["fp8_matmul"] = {"reason": reason}
        run.skip("matmul", reason, benchmark="fp8")
        return
    bench["fp8_matmul_tflops"] = None
    try:
        fp8 = fp8_matmul(device, n, repeats=repeats, warmup=sizes.warmup)
        bench["fp8_matmul_tflops"] = fp8["tflops"]
        bench["fp8_matmul"] = fp8
        try:
            bench["fp8_matmul"]["fast_accum"] = fp8_matmul(device, n, repeats=repeats, warmup=sizes.warmup,
                                                           fast_accum=True)
        except Exception as error:
            run.error("matmul", error, benchmark="fp8 fast_accum")
        log(f"matmul: fp8 {n}^3 {fp8['tflops']:.1f} TFLOP/s")
    except Exception as error:
        bench["fp8_matmul"] = {"reason": f"failed: {_one_line(error)}"}
        run.error("matmul", error, benchmark="fp8")


def bandwidth_part(run: Run, sizes: Sizes) -> None:
    """Device memory bandwidth: copy_ between two float32 buffers of `bandwidth_bytes` (GB/s = 2 x bytes / time:
    each byte read once and written once) and a float32 sum of one buffer (GB/s = bytes / time: read only)."""
    import torch

    device, repeats = run.settings.device, run.settings.repeats
    elements = sizes.bandwidth_bytes // 4
    src = torch.rand(elements, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy = _summary(time_ms(lambda: dst.copy_(src), device=device, warmup=sizes.warmup, samples=repeats))
    copy["gbs"] = 2.0 * sizes.bandwidth_bytes / (copy["ms"] * 1e-3) / 1e9
    read = _summary(time_ms(lambda: src.sum(), device=device, warmup=sizes.warmup, samples=repeats))
    read["gbs"] = sizes.bandwidth_bytes / (read["ms"] * 1e-3) / 1e9
    run.microbenchmarks["hbm_bandwidth_gbs"] = copy["gbs"]
    run.microbenchmarks["hbm_bandwidth"] = {
        "buffer_bytes": sizes.bandwidth_bytes, "copy": copy, "read": read,
        "method": "hbm_bandwidth_gbs = the copy: dst.copy_(src) of two float32 buffers, bytes counted = read + "
                  "write (2 x buffer_bytes); read = src.sum(), bytes counted = buffer_bytes",
        **({"note": "CPU fallback (smoke sizes): host memory, not HBM"} if device == "cpu" else {})}
    log(f"bandwidth: copy {copy['gbs']:.0f} GB/s (read + write), read-only sum {read['gbs']:.0f} GB/s")


# ------------------------------------------------------------------------------------------------ model


def model_config(settings: Settings) -> dict:
    config = json.loads(settings.config.read_text(encoding="utf-8"))
    if settings.smoke:
        config.update(SMOKE_CONFIG)
        config.pop("head_dim", None)
    return config


def architecture(settings: Settings, config: dict) -> LlmArchitecture:
    """The advisor's view of the model measured (read from the same dict the model is built from)."""
    if not settings.smoke:
        return load_architecture(settings.config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"{settings.config.resolve().parent.name}-smoke"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        return load_architecture(folder)


def build_model(config: dict, device: str, dtype):
    """transformers' LlamaForCausalLM allocated directly on `device` in `dtype` (no CPU copy, no fp32 detour),
    every weight then refilled in place: matrices N(0, 0.02), norm weights 1, biases 0, so nothing depends on
    whether this transformers version initialised them."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        hf_config = LlamaConfig.from_dict(dict(config))
    except ValueError:  # an older transformers that rejects llama3 rope_scaling: RoPE's variant costs the same
        hf_config = LlamaConfig.from_dict({k: v for k, v in config.items() if k != "rope_scaling"})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(hf_config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(dtype=dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02)
            elif "norm" in name:
                param.fill_(1.0)
            else:
                param.zero_()
    return model


def model_part(run: Run, config: dict, dtype):
    """Build the model, then check on the device that the decode step computes what transformers computes."""
    model = build_model(config, run.settings.device, dtype)
    run.model["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    run.model["rope_scaling_used"] = getattr(model.config, "rope_scaling", None) is not None
    try:
        run.model["decode_check"] = decode_check(model, run.settings.device)
        log(f"model: decode check {run.model['decode_check']}")
    except Exception as error:
        run.error("model", error, stage="decode_check")
    return model


def decode_check(model, device: str, batch: int = 2, tokens: int = 8) -> dict:
    """The script's decode step, token by token over a random prompt, against transformers' forward of the whole
    prompt: the largest absolute difference of the last token's logits (in the run's dtype, so rounding differs),
    the largest logit, and the share of sequences whose greedy next token agrees."""
    import torch

    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), device=device)
    expected = model(input_ids=ids).logits[:, -1].float()
    step = DecodeStep(model, batch, tokens, 0)
    for position in range(tokens):
        step.move_to(position)
        step.token_ids.copy_(ids[:, position:position + 1])
        logits = step()[:, -1].float()
    return {"tokens": tokens, "batch": batch, "max_abs_diff": float((logits - expected).abs().max()),
            "max_abs_logit": float(expected.abs().max()),
            "argmax_agree": float((logits.argmax(-1) == expected.argmax(-1)).float().mean())}


def prefill_logits(model, input_ids):
    """One prefill step: the decoder over the prompt (KV written to transformers' default cache) and lm_head on the
    last position only, as a serving engine computes it."""
    out = model.model(input_ids=input_ids, use_cache=True)
    return model.lm_head(out.last_hidden_state[:, -1:, :])


# ------------------------------------------------------------------------------------------------ decode


class DecodeStep:
    """One decode step of `batch` sequences at position `position` over a static KV cache (one K and one V tensor
    of [batch, kv_heads, cache_len, head_dim] per layer), built from the model's own modules. Calling it writes the
    new token's K and V at `position`, attends slots 0..position (a view: no copy, fixed at capture), computes the
    logits of the new token and writes the greedy next token into `token_ids` in place, so the same call can be
    captured in a CUDA graph and replayed. Attention: the query heads sharing one KV head are stacked as query rows,
    [batch, kv_heads, group, head_dim] against [batch, kv_heads, position + 1, head_dim], which for a single query
    token is exactly grouped-query attention without repeating K and V."""

    def __init__(self, model, batch: int, cache_len: int, position: int):
        import torch

        config = model.config
        self.model = model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.batch = batch
        weight = model.lm_head.weight
        device, dtype = weight.device, weight.dtype
        self.token_ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        shape = (batch, self.kv_heads, cache_len, self.head_dim)
        # earlier tokens' K and V: random values (the time does not depend on them)
        self.caches = [(torch.empty(shape, device=device, dtype=dtype).normal_(),
                        torch.empty(shape, device=device, dtype=dtype).normal_())
                       for _ in model.model.layers]
        self.move_to(position)

    def move_to(self, position: int) -> None:
        """Write the next call's token at `position` (a graph captured before keeps the position it had)."""
        weight = self.model.lm_head.weight
        self.position = position
        self.cos, self.sin = self._rotary(position, weight.device, weight.dtype)

    def _rotary(self, position: int, device, dtype):
        """cos, sin of the position, [1, 1, 1, head_dim], from the model's own rotary module (llama3 scaling and
        all); from plain RoPE with rope_theta where this transformers version has no model-level rotary module."""
        import torch

        positions = torch.tensor([[position]], device=device)
        probe = torch.zeros(1, 1, self.head_dim, device=device, dtype=dtype)
        rotary = getattr(self.model.model, "rotary_emb", None)
        if rotary is not None:
            cos, sin = rotary(probe, positions)
        else:
            theta = float(getattr(self.model.config, "rope_theta", 10000.0))
            inv = 1.0 / theta ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
                                  / self.head_dim)
            freqs = positions[..., None].float() * inv
            emb = torch.cat((freqs, freqs), dim=-1)
            cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        return cos.reshape(1, 1, 1, -1), sin.reshape(1, 1, 1, -1)

    def _rope(self, x):
        import torch

        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * self.cos + rotated * self.sin

    def __call__(self):
        import torch
        import torch.nn.functional as F

        b, p, d = self.batch, self.position, self.head_dim
        group = self.heads // self.kv_heads
        x = self.model.model.embed_tokens(self.token_ids)  # [b, 1, hidden]
        for layer, (k_cache, v_cache) in zip(self.model.model.layers, self.caches):
            attn = layer.self_attn
            y = layer.input_layernorm(x)
            q = self._rope(attn.q_proj(y).view(b, 1, self.heads, d).transpose(1, 2))  # [b, heads, 1, d]
            k = self._rope(attn.k_proj(y).view(b, 1, self.kv_heads, d).transpose(1, 2))
            v = attn.v_proj(y).view(b, 1, self.kv_heads, d).transpose(1, 2)
            k_cache[:, :, p:p + 1].copy_(k)
            v_cache[:, :, p:p + 1].copy_(v)
            o = F.scaled_dot_product_attention(q.reshape(b, self.kv_heads, group, d), k_cache[:, :, :p + 1],
                                               v_cache[:, :, :p + 1])
            x = x + attn.o_proj(o.reshape(b, 1, self.heads * d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        logits = self.model.lm_head(self.model.model.norm(x))  # [b, 1, vocab]
        self.token_ids.copy_(torch.argmax(logits, dim=-1))
        return logits


def decode_bytes_needed(arch: LlmArchitecture, batch: int, context: int) -> int:
    """KV cache of the point plus a working margin: logits (bf16 and an fp32 copy) and 512 MiB."""
    return batch * context * arch.kv_bytes_per_token("bf16") + batch * arch.vocab_size * 6 + 512 * 1024 ** 2


def free_bytes(device: str) -> int | None:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free - GIB)  # keep 1 GiB for the allocator's fragmentation and cuBLAS workspaces
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(int(line.split()[1]) * 1024 * 0.8)
    except OSError:
        pass
    return None


def graph_of(step: DecodeStep):
    """A CUDA graph of one decode step (warmed on a side stream first, as torch.cuda.graphs asks)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    return graph


# ------------------------------------------------------------------------------------------------ model parts


def prefill_part(run: Run, model, vocab: int) -> None:
    import torch

    device, repeats = run.settings.device, run.settings.repeats
    run.notes["prefill"] = [
        "prefill: transformers LlamaModel forward over one prompt (SDPA causal attention, KV written to its default "
        "cache) and lm_head on the last token; eager in every record (engines capture decode steps in CUDA graphs, "
        "not prefills)"]
    for prompt in run.settings.prompt_lengths:
        if (reason := run.over_budget()) is not None:
            run.skip("prefill", reason, prompt_tokens=prompt)
            continue
        try:
            ids = torch.randint(0, vocab, (1, prompt), device=device)
            samples = time_ms(lambda: prefill_logits(model, ids), device=device, warmup=2, samples=repeats)
            timing = step_timing("prefill", 1, prompt, 0, samples)
            run.steps["prefill"].append(timing)
            log(f"prefill: 1 x {prompt} tokens {timing.ms:.2f} ms {list(map(_round, timing.ms_interval))}")
        except Exception as error:
            run.error("prefill", error, prompt_tokens=prompt)
            _release_memory(device)
        run.write()


def _round(value: float) -> float:
    return round(value, 3)


def decode_part(run: Run, model, arch: LlmArchitecture, mode: str) -> None:
    """Every (batch, context) point that fits, eager or replayed from a CUDA graph. A point that would not fit in
    free memory is skipped with its size; an out-of-memory error is caught, memory released, and the run goes on.
    A failed graph capture ends the cudagraph part (the next captures would fail the same way)."""
    device, repeats = run.settings.device, run.settings.repeats
    how = ("eager: every module launched from Python each step" if mode == "eager"
           else "cudagraph: the same step captured once per point in a torch.cuda.CUDAGraph and replayed")
    run.notes[mode] = [f"decode {how}; static KV cache of exactly `context` slots per sequence (context - 1 "
                       f"earlier tokens with random values plus the new token), the model's own modules driven by "
                       f"{SOURCE}'s KV-cached step, SDPA with the query heads of each KV group stacked, lm_head and "
                       f"a greedy argmax"]
    _release_memory(device)  # the prefill's cached blocks: mem_get_info must see them free
    for batch in run.settings.batch_sizes:
        for context in run.settings.contexts:
            where = {"batch": batch, "context": context}
            if (reason := run.over_budget()) is not None:
                run.skip(mode_part(mode), reason, **where)
                continue
            need, free = decode_bytes_needed(arch, batch, context), free_bytes(device)
            if free is not None and need > free:
                run.skip(mode_part(mode), f"does not fit: needs {need / GIB:.1f} GiB (KV cache "
                         f"{batch * context * arch.kv_bytes_per_token('bf16') / GIB:.1f} GiB), "
                         f"{max(free, 0) / GIB:.1f} GiB free", **where)
                continue
            try:
                timing = decode_point(model, batch, context, mode, device=device, repeats=repeats)
                run.steps[mode].append(timing)
                log(f"decode {mode}: batch {batch} context {context} {timing.ms:.3f} ms "
                    f"{list(map(_round, timing.ms_interval))}")
            except CaptureError as error:
                run.error("cudagraph", error.__cause__ or error, stage="capture", **where)
                run.skip("cudagraph", f"capture failed at batch {batch}, context {context}: "
                         f"{_one_line(error.__cause__ or error)}; remaining points not tried")
                return
            except Exception as error:  # out of memory included: release it and go on
                run.error(mode_part(mode), error, **where)
            finally:
                _release_memory(device)
            run.write()


class CaptureError(RuntimeError):
    """A CUDA graph capture that failed for a reason other than memory (its cause is chained)."""


def decode_point(model, batch: int, context: int, mode: str, *, device: str, repeats: int) -> StepTiming:
    """One (batch, context) decode point; the cache and the graph die with this frame."""
    import torch

    step = DecodeStep(model, batch, context, context - 1)
    call = step
    if mode == "cudagraph":
        try:
            call = graph_of(step).replay
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:
            raise CaptureError(f"CUDA graph capture failed: {_one_line(error)}") from error
    samples = time_ms(call, device=device, warmup=3, samples=repeats)
    return step_timing("decode", batch, 0, context, samples)


def mode_part(mode: str) -> str:
    return "decode" if mode == "eager" else "cudagraph"


# ------------------------------------------------------------------------------------------------ hardware


def hardware_record(run: Run) -> tuple[Hardware | None, str]:
    """The Hardware of the records: datasheet bf16 peaks from advisor/llm/priors.json for a known GPU (the SXM
    figures; a PCIe or NVL part gets the measured ones), else this run's microbenchmarks (square bf16 matmul,
    device copy); (None, why) where neither exists."""
    env, bench = run.environment, run.microbenchmarks
    measured = (bench.get("bf16_matmul_tflops"), bench.get("hbm_bandwidth_gbs"))
    detail = {"cores": env["host"]["cores"], "cpu": env["host"]["cpu"]}
    if env["device"] == "cuda":
        gpu = env["gpu"]
        name = gpu["name"]
        detail.update(compute_capability=gpu["compute_capability"], memory_gib=gpu["memory_gib"],
                      driver=env["versions"]["driver"])
        entry = load_priors()["gpus"].get(gpu_key(name), {})
        variant = re.search(r"PCIE|NVL", name.upper())
        if "bf16_dense_tflops" in entry and "memory_bandwidth_gbs" in entry and not variant:
            detail["peaks_from"] = f"datasheet (advisor/llm/priors.json gpus.{gpu_key(name)}: {entry['source']})"
            return Hardware("gpu", name, 1, float(entry["bf16_dense_tflops"]), float(entry["memory_bandwidth_gbs"]),
                            detail), ""
        why_measured = (f"{name} is a {variant.group(0)} part; priors.json holds SXM figures" if variant
                        else f"priors.json has no bf16 and bandwidth datasheet figures for {name}")
        kind = "gpu"
    else:
        name, kind, why_measured = env["host"]["cpu"], "cpu", "a CPU run: no datasheet figures"
    if not all(v and v > 0 for v in measured):
        return None, f"no peak figures: {why_measured}, and the matmul/bandwidth microbenchmarks did not both run"
    detail["peaks_from"] = (f"measured by this run ({why_measured}): bf16 square matmul TFLOP/s and device copy "
                            f"GB/s (read + write)")
    return Hardware(kind, name, 1, float(measured[0]), float(measured[1]), detail), ""


# ------------------------------------------------------------------------------------------------ main


def print_summary(run: Run, path: Path) -> None:
    bench = run.microbenchmarks
    lines = [f"gpu_llm_calibration: {run.model_name or 'model not built'} on "
             f"{(run.environment.get('gpu') or {}).get('name') or run.environment['host']['cpu']}"]
    for key, label, unit in (("bf16_matmul_tflops", "bf16 matmul", "TFLOP/s"),
                             ("fp8_matmul_tflops", "fp8 matmul", "TFLOP/s"),
                             ("hbm_bandwidth_gbs", "memory bandwidth (copy, read + write)", "GB/s")):
        value = bench.get(key)
        why = (bench.get("fp8_matmul") or {}).get("reason", "") if key == "fp8_matmul_tflops" else ""
        lines.append(f"  {label}: {f'{value:.1f} {unit}' if value else 'not measured'}{why and f' ({why})'}")
    for timing in run.steps["prefill"]:
        lines.append(f"  prefill {timing.prompt_tokens:>6} tokens: {timing.ms:9.3f} ms")
    for mode in ("eager", "cudagraph"):
        for timing in run.steps[mode]:
            lines.append(f"  decode {mode:<9} batch {timing.batch:>3} context {timing.context:>6}: "
                         f"{timing.ms:8.3f} ms")
    lines.append(f"  {len(run.errors)} error(s), {len(run.skipped)} skipped; wall {run.elapsed():.1f} s; "
                 f"complete: {run.complete}")
    lines.append(f"  written: {path}")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    import torch

    if settings.device == "cuda" and not torch.cuda.is_available():
        print("gpu_llm_calibration.py: error: --device cuda but torch.cuda.is_available() is False "
              "(no CUDA GPU for this torch; use --device cpu --smoke for a CPU check)", file=sys.stderr)
        return 2
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    run = Run(settings=settings, date=date)
    run.environment = environment(settings.device)
    log(f"device: {(run.environment['gpu'] or {}).get('name') or run.environment['host']['cpu']}; "
        f"torch {torch.__version__}; budget {settings.max_seconds:g} s")
    sizes = SMOKE_SIZES if settings.smoke else GPU_SIZES
    dtype = getattr(torch, DTYPES[settings.dtype])
    torch.manual_seed(0)
    config = model_config(settings)
    arch = None
    try:
        arch = architecture(settings, config)
        run.work = model_work(arch, precision_named(settings.dtype), "bf16")
        run.model_slug = re.sub(r"[^A-Za-z0-9._-]+", "-", arch.name).strip("-") or "model"
        run.model_name = (f"{arch.name} architecture ({arch.num_layers} layers, hidden {arch.hidden_size}), "
                          f"random weights")
        run.model = {"name": run.model_name, "config": str(settings.config), "hf_config": config,
                     "params": arch.params_total, "work": run.work.to_dict()}
    except Exception as error:
        run.error("model", error, stage="architecture")
    path = run.write()
    try:
        with torch.inference_mode():
            run_part(run, "matmul", lambda: matmul_part(run, sizes, arch))
            run_part(run, "bandwidth", lambda: bandwidth_part(run, sizes))
            model = None
            if not {"prefill", "decode", "cudagraph"} - settings.skip:
                run.mark("model", "skipped", "--skip: no part needs it")
            elif arch is None:
                run.mark("model", "not run", "the architecture could not be read (see errors)")
            else:
                model = run_part(run, "model", lambda: model_part(run, config, dtype))
            for name, body in (("prefill", lambda: prefill_part(run, model, arch.vocab_size)),
                               ("decode", lambda: decode_part(run, model, arch, "eager")),
                               ("cudagraph", lambda: decode_part(run, model, arch, "cudagraph"))):
                if name == "cudagraph" and settings.device != "cuda" and name not in settings.skip:
                    run.mark(name, "skipped", "CUDA graphs need --device cuda")
                elif model is None and name not in settings.skip:
                    run.mark(name, "not run", "no model: the model part did not run or failed (see errors)")
                else:
                    run_part(run, name, body)
            run.complete = run.finished()
    finally:
        path = run.write()
    print_summary(run, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
