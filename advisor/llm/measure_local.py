"""Measure a built ONNX Runtime GenAI model on this CPU: engine step times for the performance model's calibration
(an advisor.llm.measurement/v1 record), and what a single user sees (TTFT, inter-token gaps), in one isolated child
process (advisor.isolation.run_isolated) so an engine crash or hang cannot take the caller down.

What is timed (time.perf_counter around one og call; prompts are random token ids, the same for every repeat):
- prefill step, per prompt length p and batch size b: one og.Generator of batch b (static batch: GeneratorParams
  batch_size), `append_tokens` of b prompts of p tokens -- the forward pass over all b*p tokens and the next-token
  logits. Making the Generator (its KV cache allocation) is not part of the step.
- decode step, per p and b: the same static batch, EOS masked; after the prefill the first `generate_next_token`
  only picks the first token (the prefill computed its logits), each later call runs one forward pass over one new
  token per sequence and picks the next. Those `new_tokens - 1` calls are the samples; the call that processes the
  k-th generated token attends p + k tokens, so the record's context is their mean, p + new_tokens / 2.
- TTFT and inter-token gaps, per p: single-sequence generations through advisor.llm.engine.OrtGenaiEngine, as the
  server drives it: TTFT from `add()` until step() returned the first token (Generator made, prompt prefilled, token
  picked); each gap from one token's return to the next one's.
Every configuration runs `warmup` untimed times, then `repeats` timed times; the loop runs all configurations once
per round, so drift and neighbours' load on this shared machine hit them alike. Each StepTiming is the median of its
samples with the 95 % interval of the median from advisor.measure.LatencyStats (a block bootstrap; with fewer than 10
samples the interval reaches the slowest one).

Memory: the child's resident-set high-water mark (VmHWM in /proc/self/status) after importing the runtime and before
loading the model (the baseline), and at the end; peak_memory_mib is the increase: weights, ONNX Runtime's arenas
and the largest KV caches and activations (batch max(batch_sizes) at the longest prompt) together.

ONNX Runtime uses its default intra-op thread pool (every logical CPU).
"""

from __future__ import annotations

import datetime as dt
import importlib
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

from advisor.isolation import run_isolated
from advisor.llm.architecture import load_architecture
from advisor.llm.engine import ENGINE_NAME, BuiltModel, EngineError
from advisor.llm.measurement_record import Hardware, LlmMeasurement, StepTiming
from advisor.llm.perf import model_work
from advisor.llm.precision import precision_named
from advisor.measure import LatencyStats

SOURCE = "advisor.llm.measure_local"
KV_DTYPE = "fp32"  # ONNX Runtime GenAI's CPU builds keep the KV cache in fp32 at every weight precision
PERCENTILE_KEYS = ("p50", "p90", "p95", "p99")
# how the builder lays out quantised weights on CPU (onnxruntime_genai.models.quantization.quant_config defaults)
_WEIGHT_LAYOUT = {
    "fp32": "fp32 MatMul weights",
    "int4-wo": "MatMulNBits int4 weights, symmetric blocks of 32 with an fp32 scale, accuracy_level 4 (activations "
               "quantised to int8 for the dot products)",
    "int8-wo": "MatMulNBits int8 weights, symmetric blocks of 32 with an fp32 scale, accuracy_level 4",
}


@dataclass(frozen=True)
class LocalMeasureSettings:
    prompt_lengths: tuple[int, ...] = (32, 128)
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    new_tokens: int = 16  # per generation; new_tokens - 1 decode steps are timed in each
    repeats: int = 5
    warmup: int = 1

    def __post_init__(self):
        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise ValueError("prompt_lengths must be one or more positive token counts")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("batch_sizes must be one or more positive batch sizes")
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be at least 2 (one timed decode step), got {self.new_tokens}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be at least 1 and warmup at least 0")


@dataclass(frozen=True)
class LocalMeasurement:
    record: LlmMeasurement
    ttft_ms: dict  # {"p50", "p90", "p95", "p99", "interval_p50": [lo, hi], "samples", "by_prompt_tokens": {p: ...}}
    itl_ms: dict  # the same for the gaps between consecutive tokens of one sequence
    peak_memory_mib: float  # RSS high-water mark increase from loading and running the model
    wall_s: float  # the whole measure_local call: the child's run, the statistics and the record
    rss_peak_mib: float  # the child's RSS high-water mark
    rss_baseline_mib: float  # the same before the model was loaded (Python, numpy, the runtime imported)

    def to_dict(self) -> dict:
        return {"record": self.record.to_dict(), "ttft_ms": self.ttft_ms, "itl_ms": self.itl_ms,
                "peak_memory_mib": self.peak_memory_mib, "wall_s": self.wall_s, "rss_peak_mib": self.rss_peak_mib,
                "rss_baseline_mib": self.rss_baseline_mib}


def measure_local(built: BuiltModel, hf_folder: Path, settings: LocalMeasureSettings = LocalMeasureSettings(), *,
                  timeout_s: float = 300) -> LocalMeasurement:
    """Measure `built` on this machine (module docstring); `hf_folder` is what it was built from (its config gives
    the record's ModelWork). EngineError when the child fails or times out."""
    started = time.monotonic()
    arch = load_architecture(Path(hf_folder))
    work = model_work(arch, precision_named(built.precision), KV_DTYPE)
    result = run_isolated(_measure_in_child, (str(built.folder), settings), timeout_s=timeout_s)
    if not result.ok:
        raise EngineError(f"measuring {built.folder} failed: {result.reason}")
    raw = result.value
    steps = tuple(_step(kind, batch, prompt, settings.new_tokens, samples)
                  for (kind, batch, prompt), samples in sorted(raw["steps"].items()))
    hardware, cpu = _hardware()
    model_name = Path(hf_folder).resolve().name
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    rss_peak, rss_baseline = raw["rss_peak_mib"], raw["rss_baseline_mib"]
    notes = (
        f"prefill: og append_tokens over a static batch (GeneratorParams batch_size) of random prompts; decode: each "
        f"og generate_next_token after the first of a static batch with EOS masked, {settings.new_tokens - 1} per "
        f"generation, context = prompt + {settings.new_tokens // 2} (the mean attended); {settings.repeats} repeats "
        f"after {settings.warmup} warm-up, configurations interleaved round by round",
        f"weights: {_WEIGHT_LAYOUT[built.precision]}; embeddings, norms and the KV cache fp32. The built model's "
        f"files hold {_model_bytes(built.folder)} bytes (RoPE cos/sin caches included); work.weight_bytes "
        f"({work.weight_bytes:.0f}) follows advisor.llm.precision's {built.precision} sizing",
        f"threads: ONNX Runtime's default intra-op pool on {cpu.logical_cores} logical CPUs; the machine may have "
        f"been shared, so the samples carry its load",
        f"memory: RSS high-water mark {rss_peak:.1f} MiB, {rss_baseline:.1f} MiB before the model was loaded",
        f"peak_tflops is the catalogue's fp32 peak ({hardware.detail['peaks_from']})",
    )
    record = LlmMeasurement(
        id=_slug(f"ort-genai-{model_name}-{built.precision}-{cpu.microarchitecture}-{date}"),
        date=date, source=SOURCE, hardware=hardware, engine=ENGINE_NAME, engine_version=raw["versions"][ENGINE_NAME],
        versions=raw["versions"],
        model=f"{model_name} ({arch.model_type}, {arch.num_layers} layers, hidden {arch.hidden_size})",
        work=work, precision=built.precision, tensor_parallel=1, steps=steps, notes=notes)
    ttft, itl = _summary(raw["ttft"]), _summary(raw["itl"])
    return LocalMeasurement(record, ttft, itl, round(max(rss_peak - rss_baseline, 0.0), 1),
                            round(time.monotonic() - started, 2), rss_peak, rss_baseline)


def _step(kind: str, batch: int, prompt: int, new_tokens: int, samples: list[float]) -> StepTiming:
    stats = LatencyStats.from_samples(samples)
    low, high = stats.intervals["p50"]
    # a bootstrap interval need not hold the point estimate when samples tie; the record requires it to
    interval = (min(low, stats.p50), max(high, stats.p50))
    if kind == "prefill":
        return StepTiming("prefill", batch, prompt, 0, stats.p50, interval, stats.n)
    return StepTiming("decode", batch, 0, prompt + new_tokens // 2, stats.p50, interval, stats.n)


def _stats_dict(samples: list[float]) -> dict:
    stats = LatencyStats.from_samples(samples)
    return {**{key: stats.at(key) for key in PERCENTILE_KEYS}, "interval_p50": list(stats.intervals["p50"]),
            "samples": stats.n}


def _summary(by_prompt: dict[int, list[float]]) -> dict:
    pooled = [value for samples in by_prompt.values() for value in samples]
    return {**_stats_dict(pooled),
            "by_prompt_tokens": {str(prompt): _stats_dict(samples) for prompt, samples in sorted(by_prompt.items())}}


def _hardware():
    from advisor.ranking import target_hardware
    from hwprofiles.catalog import load_catalog
    from hwprofiles.targets import detect_targets

    target = detect_targets()[0]
    cpu = target.cpu
    figures, basis = target_hardware(target, load_catalog())
    detail = {"peaks_from": basis, "peak_dtype": "fp32", "cpu_model": cpu.model, "vendor": cpu.vendor,
              "microarchitecture": cpu.microarchitecture, "logical_cores": cpu.logical_cores,
              "physical_cores": cpu.physical_cores, "isa": list(cpu.isa), "memory_gib": cpu.memory_gib}
    name = f"{cpu.model} ({cpu.microarchitecture})"
    return Hardware("cpu", name, 1, figures.peak_gflops / 1000.0, figures.bandwidth_gbs, detail), cpu


def _model_bytes(folder: Path) -> int:
    """model.onnx and its external data: what the engine loads as weights."""
    return sum(path.stat().st_size for path in Path(folder).iterdir() if path.name.startswith("model.onnx"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


# ---- the child ----------------------------------------------------------------------------------------------------


def _rss_high_water_mib() -> float:
    """This process's resident-set high-water mark (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from
    the process before exec, i.e. from the forked copy of the parent, which may be far larger than this child."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (the local measurement needs Linux)")


def _measure_in_child(folder: str, settings: LocalMeasureSettings) -> dict:
    import numpy as np
    import onnxruntime
    import onnxruntime_genai as og

    from advisor.llm.engine import OrtGenaiEngine

    importlib.import_module("tokenizers")  # the engine's, loaded before the baseline like the runtime
    baseline = _rss_high_water_mib()
    engine = OrtGenaiEngine(Path(folder), max_batch_size=1)
    model = engine.og_model
    rng = np.random.default_rng(0)
    widest = max(settings.batch_sizes)
    prompts = {p: rng.integers(0, engine.vocab_size, size=(widest, p), dtype=np.int32)
               for p in settings.prompt_lengths}
    steps: dict[tuple[str, int, int], list[float]] = {}
    ttft: dict[int, list[float]] = {p: [] for p in settings.prompt_lengths}
    itl: dict[int, list[float]] = {p: [] for p in settings.prompt_lengths}

    def generator(batch: int, length: int):
        params = og.GeneratorParams(model)
        params.set_search_options(batch_size=batch, max_length=length, min_length=length, do_sample=False)
        return og.Generator(model, params)

    def prefill(batch: int, prompt: int) -> list[float]:
        gen = generator(batch, prompt + 1)
        started = time.perf_counter()
        gen.append_tokens(prompts[prompt][:batch])
        return [(time.perf_counter() - started) * 1000.0]

    def decode(batch: int, prompt: int) -> list[float]:
        gen = generator(batch, prompt + settings.new_tokens)
        gen.append_tokens(prompts[prompt][:batch])
        gen.generate_next_token()  # picks the first token from the prefill's logits: no forward pass
        times = []
        for _ in range(settings.new_tokens - 1):
            started = time.perf_counter()
            gen.generate_next_token()
            times.append((time.perf_counter() - started) * 1000.0)
        return times

    def single(prompt: int) -> tuple[float, list[float]]:
        from advisor.llm.engine_api import GenerationRequest

        request = GenerationRequest(tuple(int(t) for t in prompts[prompt][0]), settings.new_tokens, ignore_eos=True)
        started = time.perf_counter()
        engine.add(request)
        arrivals = []
        while engine.active:
            engine.step()
            arrivals.append(time.perf_counter())
        gaps = [(b - a) * 1000.0 for a, b in zip(arrivals, arrivals[1:])]
        return (arrivals[0] - started) * 1000.0, gaps

    for round_index in range(settings.warmup + settings.repeats):
        timed = round_index >= settings.warmup
        for prompt in settings.prompt_lengths:
            for batch in settings.batch_sizes:
                samples = prefill(batch, prompt)
                if timed:
                    steps.setdefault(("prefill", batch, prompt), []).extend(samples)
                samples = decode(batch, prompt)
                if timed:
                    steps.setdefault(("decode", batch, prompt), []).extend(samples)
            first, gaps = single(prompt)
            if timed:
                ttft[prompt].append(first)
                itl[prompt].extend(gaps)
    engine.close()
    return {"steps": steps, "ttft": ttft, "itl": itl, "rss_baseline_mib": round(baseline, 1),
            "rss_peak_mib": round(_rss_high_water_mib(), 1),
            "versions": {"onnxruntime": onnxruntime.__version__, ENGINE_NAME: og.__version__,
                         "python": platform.python_version()}}
