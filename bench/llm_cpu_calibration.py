"""Record a CPU calibration of ONNX Runtime GenAI: a random-initialised Llama-architecture model large enough that
its weights do not stay in the caches (advisor.llm.calibration.MIN_DRAM_WEIGHT_BYTES), built in fp32 and measured
on this machine's CPU (advisor.llm.measure_local), saved as hwprofiles/measurements/llm/<id>.json.

The tiny test model (0.8 MB of weights) measures cache bandwidth and per-step overhead only; the planner needs
steps that read DRAM and prefill chunks long enough to be compute-bound, as a 1B-70B model's are.

    .venv/bin/python bench/llm_cpu_calibration.py [--out hwprofiles/measurements/llm] [--layers 6 --hidden 1536]

Takes ~3-6 minutes on 2 vCPUs (model made ~20 s, fp32 build ~1 min, measurement ~2 min). Run it on an otherwise idle
machine: the samples carry the machine's load.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from advisor.llm.calibration import cache_resident_reason  # noqa: E402
from advisor.llm.engine import build_genai_model, genai_unavailable  # noqa: E402
from advisor.llm.measure_local import LocalMeasureSettings, measure_local  # noqa: E402
from advisor.llm.tiny_model import make_tiny_model  # noqa: E402
from advisor.runfolder import write_json_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "hwprofiles" / "measurements" / "llm")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=4096)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int4-wo", "int8-wo"))
    parser.add_argument("--prompt-lengths", default="128,512")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    why = genai_unavailable()
    if why:
        print(f"llm_cpu_calibration: error: {why}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        name = f"calib-llama-{args.layers}l-{args.hidden}h"
        hf = make_tiny_model(Path(scratch) / name, layers=args.layers, hidden=args.hidden, heads=args.heads,
                             kv_heads=args.kv_heads, intermediate=args.intermediate, vocab_size=args.vocab_size)
        print(f"[{time.monotonic() - started:6.1f} s] made {name}", flush=True)
        built = build_genai_model(hf, Path(scratch) / f"{name}-{args.precision}", args.precision)
        print(f"[{time.monotonic() - started:6.1f} s] built {args.precision} in {built.build_s:.1f} s", flush=True)
        settings = LocalMeasureSettings(prompt_lengths=tuple(int(v) for v in args.prompt_lengths.split(",")),
                                        batch_sizes=tuple(int(v) for v in args.batch_sizes.split(",")),
                                        new_tokens=16, repeats=args.repeats)
        measured = measure_local(built, hf, settings, timeout_s=1800)
    record = measured.record
    print(f"[{time.monotonic() - started:6.1f} s] measured: TTFT p50 {measured.ttft_ms['p50']:.1f} ms, "
          f"inter-token p50 {measured.itl_ms['p50']:.2f} ms, peak memory +{measured.peak_memory_mib:.0f} MiB")
    for step in record.steps:
        print(f"  {step.kind:<8} batch {step.batch:>2} prompt {step.prompt_tokens:>4} context {step.context:>4}: "
              f"{step.ms:9.2f} ms [{step.ms_interval[0]:.2f}, {step.ms_interval[1]:.2f}]")
    why = cache_resident_reason(record)
    if why:
        print(f"warning: this record will not calibrate the planner: {why}")
    target = args.out / f"{record.id}.json"
    write_json_atomic(target, record.to_dict())
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
