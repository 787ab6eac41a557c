"""Reduced-precision variants against their accuracy: report.json's `precision_variants`.

For each target, every reduced-precision candidate the search measured (bf16, int8 dynamic or static, ...) next to
each backend's best fp32 candidate and the stock ONNX Runtime session, with its latency as a ratio to stock and the
accuracy it kept: the output difference to the fp32 reference, and with --eval-data the metric on the user's data.
The ratios come from the search phase, each candidate timed alone in its own worker at the SLO batch size: a guide
to what each precision buys, not the head-to-head a recommendation rests on.
"""

from __future__ import annotations

from advisor.trials import Trial

BASIS = ("search phase: each candidate timed alone in its own worker at the SLO batch size; the ratio is its median "
         "over the stock ONNX Runtime session's median on the same target")


def _precision(trial: Trial) -> str:
    return str(trial.config.get("precision", "fp32"))


def _row(trial: Trial, stock_ms: float | None) -> dict:
    p50 = trial.latency.p50 if trial.latency is not None else None
    return {"trial_id": trial.id, "backend": trial.backend, "target": trial.target, "batch_size": trial.batch_size,
            "precision": _precision(trial), "config": dict(trial.config), "status": trial.status,
            "reason": trial.reason, "p50_ms": p50,
            "vs_stock": p50 / stock_ms if p50 is not None and stock_ms else None,
            "max_rel_error": trial.max_rel_error, "tolerance": trial.tolerance,
            "accuracy": trial.details.get("accuracy"), "calibration": trial.details.get("calibration")}


def precision_variants(trials: list[Trial], settings: dict) -> dict | None:
    """None when the search tried no reduced precision (nothing to compare)."""
    search = [t for t in trials if t.phase == "search"]
    reduced = [t for t in search if _precision(t) != "fp32" and t.status in ("ok", "rejected", "skipped")]
    if not reduced:
        return None
    rows = []
    for target in sorted({t.target for t in reduced}):
        here = [t for t in search if t.target == target]
        stock = next((t for t in here if t.config.get("stock") and t.ok), None)
        stock_ms = stock.latency.p50 if stock is not None else None
        best_fp32 = {}
        for trial in here:
            if trial.ok and _precision(trial) == "fp32" and trial is not stock:
                best = best_fp32.get(trial.backend)
                if best is None or trial.latency.p50 < best.latency.p50:
                    best_fp32[trial.backend] = trial
        chosen = ([stock] if stock else []) + list(best_fp32.values()) + [t for t in reduced if t.target == target]
        rows += [_row(t, stock_ms) | {"stock": bool(t.config.get("stock"))} for t in chosen]
    return {"basis": BASIS, "calibration_data": settings.get("calibration_data") or "synthetic",
            "eval_data": settings.get("eval_data"), "max_accuracy_drop": settings.get("max_accuracy_drop"),
            "rows": rows}
