"""How well does the LLM performance model predict measured steps it was not fitted on? From stored data, in seconds.

For every hardware x engine that has measurements (advisor.llm.calibration: hwprofiles/measurements/llm/*.json, or
the files and folders given with --measurements), every measured step is predicted twice:

- after fitting: by efficiency factors fitted on the other records of that hardware and engine (leave one record
  out); where those hold fewer than FIT_MIN_POINTS steps (a single record, say), by a fit on every other step,
  this record's included (leave one point out). Each point says which ("other records" / "other points");
- before fitting: with the prior (advisor.llm.perf.prior_efficiency: published figures, or the stated assumption
  for an engine or device without any), on the same steps.

Metrics: prefill_ms and decode_ms (the records' engine steps), ttft_ms and itl_ms (serving runs, reduced to one
prefill step and one batch-1 decode step where requests rarely overlap: advisor.llm.calibration.reduce_serving).
Per metric: the median and max |predicted - measured| / measured, the range of measured / predicted (the ratio
band), and the share of steps inside the prediction x its band (relative_interval). Also the calibration the
planner would use (a fit on every record), with its factors and band.

Prints a table per group, a `llm accuracy: ...` line, then `llm TTFT MAPE`, `llm ITL MAPE` and last
`llm MAPE: X%`; writes bench/results/llm-accuracy-<YYYY-MM-DD>.json (--out DIR: elsewhere).

    .venv/bin/python bench/llm_accuracy.py [--measurements FILE_OR_DIR ...] [--with-stored] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from advisor.errors import UserError  # noqa: E402
from advisor.llm.calibration import (Calibration, HeldOutPoint, calibrate, hardware_key, held_out_points,  # noqa: E402
                                     load_measurements, record_steps, summarise_held_out)
from advisor.llm.measurement_record import LlmMeasurement  # noqa: E402
from advisor.llm.perf import FIT_MIN_POINTS  # noqa: E402
from advisor.runfolder import write_json_atomic  # noqa: E402

SCHEMA = "advisor.llm_accuracy/v1"


def group_records(records: list[LlmMeasurement]) -> dict[tuple[str, str, str], list[LlmMeasurement]]:
    """Records by (hardware kind, hardware key, engine): the units the calibration matches on."""
    groups: dict[tuple[str, str, str], list[LlmMeasurement]] = {}
    for record in records:
        key = (record.hardware.kind, hardware_key(record.hardware), record.engine.lower())
        groups.setdefault(key, []).append(record)
    return groups


def evaluate(records: list[LlmMeasurement]) -> list[tuple[dict, Calibration | None, list[HeldOutPoint]]]:
    """One entry per hardware x engine: (what the JSON holds: its records, the calibration on all of them, the
    held-out points and their summary (advisor.llm.calibration.summarise_held_out); the calibration; the points)."""
    results = []
    for (kind, device, engine), mine in sorted(group_records(records).items()):
        calibration = calibrate(device, engine, mine)
        points = held_out_points(device, engine, mine)
        refused = [f"{r.id}: not used: {why}" for r in mine for why in record_steps(r).refused]
        steps = sum(len(record_steps(r).steps) for r in mine)
        results.append(({
            "hardware": device, "kind": kind, "engine": engine,
            "records": [{"id": r.id, "date": r.date, "hardware": r.hardware.name, "model": r.model,
                         "precision": r.precision, "tensor_parallel": r.tensor_parallel,
                         "engine_version": r.engine_version, "source": r.source} for r in mine],
            "steps": steps,
            "calibration": calibration.to_dict() if calibration else None,
            "not_calibrated": None if calibration else f"{steps} steps, fewer than the {FIT_MIN_POINTS} a fit needs",
            "summary": summarise_held_out(points) if points else None,
            "held_out": [p.to_dict() for p in points],
            "notes": refused}, calibration, points))
    return results


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def print_group(group: dict, calibration: Calibration | None, points: list[HeldOutPoint]) -> None:
    ids = ", ".join(r["id"] for r in group["records"])
    print(f"\n{group['hardware']} ({group['kind']}) / {group['engine']}: {len(group['records'])} record(s) ({ids}), "
          f"{group['steps']} steps")
    if calibration is None:
        print(f"  not calibrated: {group['not_calibrated']}")
    else:
        e = calibration.efficiency
        print(f"  fit on all: compute {e.compute:.3g}, bandwidth {e.bandwidth:.3g}, interconnect {e.interconnect:.3g}, "
              f"overhead {e.step_overhead_ms:.3g} ms/step, band {e.relative_interval[0]:.2f}-"
              f"{e.relative_interval[1]:.2f}")
    for note in group["notes"]:
        print(f"  note: {note}")
    if not points:
        print("  nothing held out (too few steps to fit without the held-out one)")
        return
    print(f"  {'record':<28} {'step':<34} {'held out on':<13} {'measured ms':>11} {'prior ms':>10} {'fitted ms':>10} "
          f"{'err prior':>9} {'err fit':>8}")
    for p in points:
        print(f"  {p.record[:28]:<28} {p.label[:34]:<34} {p.scheme:<13} {p.measured_ms:>11.4g} {p.prior_ms:>10.4g} "
              f"{p.fitted_ms:>10.4g} {_pct(p.prior_error):>9} {_pct(p.fitted_error):>8}")
    print(f"  {'metric':<11} {'n':>3}  {'|error| before: median / max':>29}  {'after: median / max':>20}  "
          f"{'meas/pred before':>16}  {'after':>11}  {'in band before / after':>22}")
    for metric, s in group["summary"].items():
        prior, fitted = s["prior"], s["fitted"]
        print(f"  {metric:<11} {s['points']:>3}  {_pct(prior['median_abs_error']):>15} / "
              f"{_pct(prior['max_abs_error']):>11}  {_pct(fitted['median_abs_error']):>8} / "
              f"{_pct(fitted['max_abs_error']):>9}  {prior['ratio_min']:>7.2f}-{prior['ratio_max']:<8.2f}  "
              f"{fitted['ratio_min']:>5.2f}-{fitted['ratio_max']:<5.2f}  "
              f"{prior['inside_band'] * 100:>12.0f}% / {fitted['inside_band'] * 100:.0f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", type=Path, action="append", default=[], metavar="FILE_OR_DIR",
                        help="measurement files or folders (repeatable); given, they replace the stored ones "
                             "unless --with-stored")
    parser.add_argument("--with-stored", action="store_true",
                        help="with --measurements: the stored measurements too")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                        help="folder for llm-accuracy-<YYYY-MM-DD>.json")
    args = parser.parse_args(argv)
    try:
        records = load_measurements(args.measurements, stored=args.with_stored or not args.measurements)
    except UserError as error:
        print(f"llm_accuracy: error: {error}", file=sys.stderr)
        return 2
    started = time.monotonic()
    evaluated = evaluate(records)
    groups = [group for group, _, _ in evaluated]
    everything: list[HeldOutPoint] = []
    for group, calibration, points in evaluated:
        everything += points
        print_group(group, calibration, points)
    overall = summarise_held_out(everything).get("all") if everything else None
    stamp = time.strftime("%Y-%m-%d")
    target = args.out / f"llm-accuracy-{stamp}.json"
    write_json_atomic(target, {
        "schema": SCHEMA, "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": {"measurements": [str(p) for p in args.measurements], "with_stored": args.with_stored},
        "measurements": len(records), "groups": groups, "overall": overall,
        "wall_s": round(time.monotonic() - started, 3)})
    mape = _mape(everything)
    write_json_atomic(target, {**json.loads(target.read_text()), "mape": mape})
    print(f"\nwrote {target}")
    if overall is None:
        print(f"llm accuracy: no held-out steps ({len(records)} measurements, {len(groups)} hardware x engine groups)")
    else:
        print(f"llm accuracy: held-out median |error| {_pct(overall['fitted']['median_abs_error'])} after fitting, "
              f"{_pct(overall['prior']['median_abs_error'])} before (prior), over {overall['points']} steps of "
              f"{sum(1 for g in groups if g['held_out'])} hardware x engine groups (max "
              f"{_pct(overall['fitted']['max_abs_error'])} after, {_pct(overall['prior']['max_abs_error'])} before)")
    # issue 14's summary lines: TTFT rests on prefill steps, ITL on decode steps (a serving run's own TTFT and
    # ITL count with them); mean |error| of the fit on held-out steps
    for name in ("TTFT", "ITL"):
        value = mape[name]
        print(f"llm {name} MAPE: " + ("n/a (no held-out steps)" if value is None else
                                      f"{value * 100:.1f}% over {mape[name + '_points']} held-out steps"))
    print("llm MAPE: " + ("n/a" if mape["all"] is None else f"{mape['all'] * 100:.1f}%"))
    return 0


MAPE_METRICS = {"TTFT": ("prefill_ms", "ttft_ms"), "ITL": ("decode_ms", "itl_ms")}


def _mape(points: list[HeldOutPoint]) -> dict:
    """Mean |fitted - measured| / measured over the held-out steps, for TTFT, ITL and all together."""
    result = {}
    for name, metrics in MAPE_METRICS.items():
        errors = [abs(p.fitted_ms - p.measured_ms) / p.measured_ms for p in points if p.metric in metrics]
        result[name] = sum(errors) / len(errors) if errors else None
        result[name + "_points"] = len(errors)
    errors = [abs(p.fitted_ms - p.measured_ms) / p.measured_ms for p in points]
    result["all"] = sum(errors) / len(errors) if errors else None
    return result


if __name__ == "__main__":
    sys.exit(main())
