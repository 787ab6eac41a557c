"""Untuned TVM, MetaSchedule-tuned TVM and stock ONNX Runtime, side by side, on a CNN and a transformer encoder.

For each model, one isolated worker builds the three candidates through the real backends (the tuned one tunes
within the TVM share of the default `advisor recommend --budget`, from an empty tuning database unless
--cache-dir is given), checks each against the ONNX Runtime fp32 reference, then times them interleaved in
that one process with the shared harness, so the ratios are measured under the same conditions.

    .venv/bin/python bench/tvm_tuning.py [--models cnn,encoder,resnet18,bert] [--budget 120s] [--cache-dir DIR]

resnet18 and bert (transformers architectures, random weights) need torch; `scripts/make_models.py` builds them.
Prints a table and one line per target the issue sets (tuned >= 5x untuned; tuned within 1.5x of ONNX Runtime).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from advisor.units import parse_duration_s  # noqa: E402
from advisor.config import DEFAULT_BUDGET_S  # noqa: E402
from advisor.executor import ExecutionLimits, MeasureJob, ensure_reference, run_job  # noqa: E402
from advisor.measure import HarnessSettings  # noqa: E402
from advisor.model import ModelSpec, analyze  # noqa: E402
from advisor.tuning import ARTIFACT_SHARE, SEARCH_SHARE  # noqa: E402
from hwprofiles.targets import detect_targets  # noqa: E402
from tuners.base import Candidate, TrialOutcome, TuneContext  # noqa: E402
from tuners.onnxruntime import stock_config  # noqa: E402
from tuners.registry import TUNERS  # noqa: E402
from tuners.tvm import TvmTuner  # noqa: E402

SEQUENCE = 128
HARNESS = HarnessSettings(warmup=3, min_iterations=20, min_time_s=2.0, max_time_s=60.0)


def default_tvm_share(budget_s: float) -> float:
    """The TVM search budget `advisor recommend --budget B` gives on a CPU with ONNX Runtime and TVM."""
    weights = TUNERS["onnxruntime"].budget_weight + TUNERS["tvm"].budget_weight
    return budget_s * (1 - ARTIFACT_SHARE) * SEARCH_SHARE * TUNERS["tvm"].budget_weight / weights


def build_models(folder: Path, names: list[str]) -> dict[str, tuple[Path, dict]]:
    import models

    tokens = {"input_ids": (1, SEQUENCE), "attention_mask": (1, SEQUENCE)}
    built: dict[str, tuple[Path, dict]] = {}
    for name in names:
        if name == "cnn":
            built[name] = (models.save(models.tiny_cnn(128, 48, seed=1), folder / "cnn.onnx"), {})
        elif name == "encoder":
            built[name] = (models.save(models.tiny_encoder(2000, 256), folder / "encoder.onnx"), tokens)
        elif name in ("resnet18", "bert"):
            sys.path.insert(0, str(REPO / "scripts"))
            try:
                import make_models
            except ImportError as error:
                print(f"(skipping {name}: torch/transformers not installed: {error})")
                continue
            if name == "resnet18":
                built[name] = (make_models.resnet(folder), {})
            else:
                built[name] = (make_models.bert(folder), {**tokens, "token_type_ids": (1, SEQUENCE)})
        else:
            raise SystemExit(f"unknown model {name!r}")
    return built


def measure(name: str, path: Path, shapes: dict, budget_s: float, cache_dir: Path, scratch: Path) -> dict:
    target = detect_targets()[0]
    info = analyze(ModelSpec(path, shapes))
    ctx = TuneContext(info=info, target=target, workdir=scratch / name / "work", cache_dir=cache_dir,
                      budget_s=budget_s, tolerance=0.05)
    search = TvmTuner().search(ctx)
    [untuned] = search.ask()
    search.tell(TrialOutcome(untuned, True, 1.0))
    [tuned] = search.ask()
    stock = Candidate("onnxruntime", target.id, stock_config())
    data = ensure_reference(info, 1, scratch / name / "data", 300, None)
    trials = run_job(MeasureJob((stock, untuned, tuned), ctx, data, HARNESS), "bench",
                     ExecutionLimits(budget_s + 1800, None, None))
    by_kind = dict(zip(("ort", "untuned", "tuned"), trials))
    for kind, trial in by_kind.items():
        if not trial.ok:
            raise SystemExit(f"{name}: {kind} failed: {trial.reason}")
    return by_kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,encoder,resnet18,bert")
    parser.add_argument("--budget", default=f"{DEFAULT_BUDGET_S:.0f}s", help="the --budget of a recommend run")
    parser.add_argument("--cache-dir", type=Path, default=None, help="tuning database (default: a fresh one)")
    args = parser.parse_args()
    budget = default_tvm_share(parse_duration_s(args.budget))
    print(f"TVM budget: {budget:.0f} s (its share of --budget {args.budget}); harness min {HARNESS.min_time_s} s "
          f"per candidate, interleaved in one process")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tvm-") as folder:
        scratch = Path(folder)
        cache = args.cache_dir or scratch / "cache"
        for name, (path, shapes) in build_models(scratch, args.models.split(",")).items():
            print(f"{name}: tuning and measuring ...", flush=True)
            rows.append((name, measure(name, path, shapes, budget, cache, scratch)))
    print()
    print(f"{'model':<10} {'ORT p50':>9} {'untuned':>10} {'tuned':>9} {'tuned/untuned':>14} {'TVM/ORT':>8} "
          f"{'tuning s':>9} {'trials':>7} {'tasks tuned':>12} {'kernels: measured/predicted/sampled':>36} "
          f"{'label':>10}")
    for name, trial in rows:
        ort, untuned, tuned = trial["ort"].latency.p50, trial["untuned"].latency.p50, trial["tuned"].latency.p50
        d = trial["tuned"].details
        print(f"{name:<10} {ort:>7.3f}ms {untuned:>8.2f}ms {tuned:>7.3f}ms {untuned / tuned:>13.1f}x "
              f"{tuned / ort:>7.2f}x {d.get('tuning_time_s', 0):>9.0f} {d.get('trials_used', 0):>7} "
              f"{d.get('tasks_tuned', 0):>5}/{d.get('tasks', 0):<6} "
              f"{d.get('functions_from_database', 0):>22}/{d.get('functions_from_cost_model', 0)}/"
              f"{d.get('functions_fallback', 0):<13} {d.get('tuning_status', '?'):>10}")
    print()
    speedups = [t["untuned"].latency.p50 / t["tuned"].latency.p50 for _, t in rows]
    print(f"tuned vs untuned: min {min(speedups):.1f}x over {len(rows)} models (target >= 5x)")
    versus = {name: t["tuned"].latency.p50 / t["ort"].latency.p50 for name, t in rows}
    print("tuned TVM / ONNX Runtime p50: " + ", ".join(f"{n} {v:.2f}x" for n, v in versus.items())
          + " (goal: within 1.5x on conv models, faster than ONNX Runtime on at least one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
