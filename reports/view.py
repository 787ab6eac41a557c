"""From the serialised report (schema advisor.report/v1) to what the HTML template shows: figures chosen, formatted
and plotted here, so the template only lays them out.

Every optional field may be null or absent; each builder falls back to an empty section rather than failing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from reports import formatting as fmt
from reports import plots
from reports.svg import MUTED, SERIES, SLO, Scale, auto_scale

TOP_CANDIDATES = 5
PHASE_ORDER = {"search": 0, "confirm": 1, "sweep": 2}
PROBLEM_STATUSES = ("failed", "rejected", "skipped")


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, (list, tuple)) else []


def _latency(trial: dict, percentile: str):
    value = _dict(trial.get("latency_ms")).get(percentile)
    return value if fmt.is_number(value) else None


def _config_key(trial: dict) -> str:
    return json.dumps([trial.get("backend"), trial.get("target"), trial.get("config"), trial.get("batch_size")],
                      sort_keys=True, default=str)


FITTED_BASES = ("interpolated", "extrapolated")


def batch_basis(row: dict) -> dict | None:
    """For a row sized at a fitted batch (`batch_basis` interpolated or extrapolated): the basis and the fit
    (`batch_fit`). None for a measured batch or an older report."""
    basis = row.get("batch_basis")
    if basis not in FITTED_BASES:
        return None
    batch = row.get("batch_size")
    prefix = f"batch {batch} {basis}"
    fit = row.get("batch_fit")
    return {"basis": basis, "batch": batch, "fit": fit,
            "note": f"{prefix}: {fit}" if fit else
            f"{prefix} from the candidate's latency-vs-batch fit: never measured at this size"}


@dataclass(frozen=True)
class Context:
    """What every section needs to know about the run."""

    percentile: str
    slo_ms: float | None
    batch_size: int
    colors: dict[str, str]
    # per backend, the settings other trials are shown against: the stock baseline's config when there is one,
    # else the settings every trial of the backend shares
    reference: dict[str, dict]
    reference_is_stock: dict[str, bool]

    def color(self, backend) -> str:
        return self.colors.get(str(backend), MUTED)

    def varying(self, trial: dict) -> str:
        """The trial's config as what differs from its backend's reference settings."""
        config = _dict(trial.get("config"))
        if config.get("stock"):
            return "stock settings"
        reference = self.reference.get(str(trial.get("backend")), {})
        differs = {k: v for k, v in config.items() if k != "stock" and (k not in reference or reference[k] != v)}
        if differs:
            return fmt.config_text(differs)
        return "same as stock" if self.reference_is_stock.get(str(trial.get("backend"))) else "base settings"


def context(report: dict) -> Context:
    slo = _dict(report.get("slo"))
    percentile = str(slo.get("percentile") or "p99")
    slo_ms = slo.get("latency_ms") if fmt.is_number(slo.get("latency_ms")) else None
    settings = _dict(report.get("settings"))
    # latencies are judged at --batch, else at batch 1 (a row's batch_size is the one its cost is computed at)
    batch = settings.get("batch_size") or 1
    trials = _list(report.get("trials"))
    names = [b.get("backend") for b in _list(report.get("backends"))] + [t.get("backend") for t in trials] + \
            [r.get("backend") for r in _list(report.get("ranking"))]
    ordered = list(dict.fromkeys(str(n) for n in names if n))
    colors = {name: SERIES[i % len(SERIES)] for i, name in enumerate(ordered)}
    reference: dict[str, dict] = {}
    is_stock: dict[str, bool] = {}
    for name in ordered:
        configs = [_dict(t.get("config")) for t in trials if str(t.get("backend")) == name]
        stock = next((c for c in configs if c.get("stock")), None)
        if stock is not None:
            reference[name], is_stock[name] = {k: v for k, v in stock.items() if k != "stock"}, True
        elif len(configs) > 1:
            first = configs[0]
            reference[name] = {k: v for k, v in first.items() if k != "stock" and all(
                k in c and c[k] == v for c in configs)}
            is_stock[name] = False
    return Context(percentile, slo_ms, int(batch) if fmt.is_number(batch) else 1, colors, reference, is_stock)


# ---- verdict --------------------------------------------------------------------------------------------------


def verdict(report: dict, ctx: Context) -> dict:
    recommendation = report.get("recommendation") if isinstance(report.get("recommendation"), dict) else None
    settings = _dict(report.get("settings"))
    if recommendation and report.get("status", "recommended") != "no_slo_met":
        row = recommendation
        runner_up = row.get("runner_up") if isinstance(row.get("runner_up"), dict) else None
        compare = [("recommended", row)] + ([("runner-up", runner_up)] if runner_up else [])
        gauge = plots.gauge(row.get("latency_ms"), row.get("latency_ms_interval"), ctx.slo_ms,
                            row.get("slo_verdict", "meets"))
        return {"ok": True, "row": row, "gauge": gauge, "margin": _margin(row, ctx),
                "compare": [(label, other, batch_basis(other)) for label, other in compare],
                "config": fmt.config_items(row.get("config"), {"stock"}), "qps": settings.get("qps"),
                "basis": batch_basis(row)}
    closest = report.get("closest_miss") if isinstance(report.get("closest_miss"), dict) else None
    info = {"ok": False, "row": closest, "qps": settings.get("qps"), "compare": [], "config": [],
            "basis": batch_basis(closest) if closest else None}
    if closest and fmt.is_number(closest.get("latency_ms")):
        info["gauge"] = plots.gauge(closest["latency_ms"], closest.get("latency_ms_interval"), ctx.slo_ms,
                                    closest.get("slo_verdict", "misses"))
        info["config"] = fmt.config_items(closest.get("config"), {"stock"})
        if ctx.slo_ms:
            info["ratio"] = closest["latency_ms"] / ctx.slo_ms
            info["over_ms"] = closest["latency_ms"] - ctx.slo_ms
            interval = closest.get("latency_ms_interval")
            info["needed_ms"] = interval[1] if isinstance(interval, (list, tuple)) and len(interval) == 2 and \
                fmt.is_number(interval[1]) else closest["latency_ms"]
    return info


def _margin(row: dict, ctx: Context) -> str | None:
    latency = row.get("latency_ms")
    if not (fmt.is_number(latency) and ctx.slo_ms):
        return None
    margin, used = ctx.slo_ms - latency, latency / ctx.slo_ms
    share = f"{used:.0%}" if used >= 0.01 else "<1%"
    return f"{fmt.ms(abs(margin))} ms {'under' if margin >= 0 else 'over'} the SLO (uses {share} of it)"


# ---- ranking ------------------------------------------------------------------------------------------------------


def ranking(report: dict, ctx: Context) -> dict:
    rows = [r for r in _list(report.get("ranking")) if r.get("instance") is not None]
    pareto = {str(p) for p in report.get("pareto") or [] if p is not None}
    recommended = _dict(report.get("recommendation")).get("instance")
    runner_up = _dict(_dict(report.get("recommendation")).get("runner_up")).get("instance")
    closest = _dict(report.get("closest_miss")).get("instance")
    labels = {}
    if recommended:
        labels[str(recommended)] = f"★ {recommended}"
    if runner_up and runner_up != recommended:
        labels[str(runner_up)] = f"runner-up: {runner_up}"
    if closest and not recommended:
        labels[str(closest)] = f"closest: {closest}"
    figures = [v for r in rows for v in (r.get("latency_ms"), *(r.get("latency_ms_interval") or [])) if
               fmt.is_number(v) and v > 0] + ([ctx.slo_ms] if ctx.slo_ms else [])
    scale = auto_scale(figures, 2, 98, pad=0.02) if figures else Scale(0, 1, 2, 98)
    view = []
    for position, row in enumerate(rows, start=1):
        latency = row.get("latency_ms")
        interval = row.get("latency_ms_interval")
        low, high = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(
            fmt.is_number(v) for v in interval) else (latency, latency)
        bar = None
        if fmt.is_number(latency) and latency > 0:
            bar = {"low": scale.clamp(low), "high": scale.clamp(high), "point": scale.clamp(latency),
                   "slo": scale.clamp(ctx.slo_ms) if ctx.slo_ms else None}
            bar["width"] = max(bar["high"] - bar["low"], 0.8)
        view.append({**row, "position": position, "recommended": row.get("instance") == recommended,
                     "pareto": str(row.get("instance")) in pareto, "color": ctx.color(row.get("backend")),
                     "low": low, "high": high, "bar": bar, "basis": batch_basis(row),
                     "verdict": row.get("slo_verdict") or ("meets" if row.get("meets_slo") else "misses")})
    plot = plots.latency_vs_price(rows, slo_ms=ctx.slo_ms, percentile=ctx.percentile, pareto=sorted(pareto),
                                  colors=ctx.colors, labels=labels)
    counts = Counter(r["verdict"] for r in view)
    sources = Counter(str(r.get("source")) for r in view)
    excluded: dict[str, list[str]] = {}
    # instances with no figure of their own: a GPU with no GPU measured is listed unpriced, never estimated from CPUs
    for entry in _list(report.get("excluded")) + _list(report.get("not_measured")):
        excluded.setdefault(str(entry.get("reason") or "no reason given"), []).append(str(entry.get("instance")))
    return {"rows": view, "plot": plot, "counts": counts, "sources": sources,
            "excluded": sorted(excluded.items(), key=lambda kv: -len(kv[1])),
            "excluded_count": sum(len(v) for v in excluded.values()), "log_scale": scale.log,
            "has_qps": fmt.is_number(_dict(report.get("settings")).get("qps"))}


# ---- sizing: latency against batch size ---------------------------------------------------------------------------


def _fit_line(line) -> dict | None:
    line = _dict(line)
    fixed, per_item = line.get("fixed_ms"), line.get("per_item_ms")
    if not (fmt.is_number(fixed) and fmt.is_number(per_item)):
        return None
    band = line.get("residual_band")
    band = tuple(band) if isinstance(band, (list, tuple)) and len(band) == 2 and all(
        fmt.is_number(v) for v in band) else None
    return {"fixed_ms": fixed, "per_item_ms": per_item, "r2": line.get("r2") if fmt.is_number(line.get("r2")) else None,
            "band": band, "text": f"{fmt.ms(fixed)} + {fmt.ms(per_item)} ms × batch"}


def _pair(value) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(fmt.is_number(v) for v in value):
        return float(value[0]), float(value[1])
    return None


def _same_candidate(fit: dict, row: dict | None) -> bool:
    return isinstance(row, dict) and str(fit.get("backend")) == str(row.get("backend")) and \
        _dict(fit.get("config")) == _dict(row.get("config")) and \
        (row.get("target") is None or str(fit.get("target")) == str(row.get("target")))


def sizing(report: dict, ctx: Context) -> dict:
    """The latency-vs-batch fits (`costmodel.batch_fits`) behind the fitted batch sizes of the ranking: a row per
    candidate, and for the recommended candidate (else the closest miss, else the top row) a plot of its measured
    latencies, the fitted line and the range it was used over."""
    fits = _list(_dict(report.get("costmodel")).get("batch_fits"))
    ranked = _list(report.get("ranking"))
    focus_row = next((r for r in (report.get("recommendation"), report.get("closest_miss"), *ranked[:1])
                      if isinstance(r, dict)), None)
    rows = []
    for fit in fits:
        latency, mean = _fit_line(fit.get("latency")), _fit_line(fit.get("mean"))
        sizes = [int(b) for b in fit.get("measured_batch_sizes") or [] if fmt.is_number(b)]
        check = _dict(fit.get("extrapolation_check"))
        cap = fit.get("max_batch_size") if fmt.is_number(fit.get("max_batch_size")) else None
        largest = max(sizes) if sizes else None
        if cap is not None and largest is not None and cap > largest:
            reach = f"{fmt.number(cap)} (extrapolated beyond {fmt.number(largest)})"
        else:
            reach = f"{fmt.number(cap)} (no extrapolation)" if cap is not None else fmt.DASH
        ratios = [f"{label} ×{fmt.number(check[key], 3)}" for label, key in (("latency", "latency_ratio"),
                                                                            ("mean", "mean_ratio"))
                  if fmt.is_number(check.get(key))]
        fitted_rows = [r for r in ranked if _same_candidate(fit, r) and r.get("batch_basis") in FITTED_BASES]
        rows.append({"fit": fit, "backend": str(fit.get("backend") or "?"), "target": str(fit.get("target") or "?"),
                     "color": ctx.color(fit.get("backend")), "varying": ctx.varying(fit),
                     "percentile": str(fit.get("percentile") or ctx.percentile), "latency": latency, "mean": mean,
                     "sizes": ", ".join(map(str, sizes)) or fmt.DASH, "reach": reach,
                     "check": ", ".join(ratios) if ratios else "none (fewer than 3 measured sizes)",
                     "relative": _pair(fit.get("relative_interval")), "used_by": len(fitted_rows),
                     "focus": False})
    focus = next((r for r in rows if _same_candidate(r["fit"], focus_row)), rows[0] if rows else None)
    plot = None
    if focus is not None:
        focus["focus"] = True
        chosen = focus_row.get("batch_size") if focus_row and _same_candidate(focus["fit"], focus_row) else None
        plot = plots.batch_fit(_fit_curve(focus), _measured_points(report, focus["fit"], focus["percentile"]),
                               slo_ms=ctx.slo_ms, percentile=focus["percentile"],
                               chosen=plots.ChosenBatch(int(chosen), str(focus_row.get("instance")),
                                                        str(focus_row.get("batch_basis") or "measured"))
                               if fmt.is_number(chosen) else None,
                               label=f"{focus['backend']} · {focus['varying']} on {focus['target']}",
                               color=focus["color"])
    return {"rows": rows, "plot": plot, "focus": focus, "focus_row": focus_row,
            "predates": "batch_fits" not in _dict(report.get("costmodel"))}


def _fit_curve(row: dict) -> plots.BatchFitCurve | None:
    latency, fit = row["latency"], row["fit"]
    sizes = sorted(int(b) for b in fit.get("measured_batch_sizes") or [] if fmt.is_number(b))
    if latency is None or not sizes:
        return None
    check = _dict(fit.get("extrapolation_check"))
    cap = fit.get("max_batch_size")
    return plots.BatchFitCurve(latency["fixed_ms"], latency["per_item_ms"], tuple(sizes),
                               int(cap) if fmt.is_number(cap) else sizes[-1], latency["band"] or (1.0, 1.0),
                               row["relative"] or (1.0, 1.0),
                               check.get("latency_ratio") if fmt.is_number(check.get("latency_ratio")) else None)


def _measured_points(report: dict, fit: dict, percentile: str) -> list[plots.BatchMeasurement]:
    """The candidate's measured figures per batch size, from the trials the ranking used: side-by-side confirm
    figures first, then the sweep, then the search (as advisor/ranking.py picks them)."""
    rank = {"confirm": 0, "sweep": 1, "search": 2}
    chosen: dict[int, dict] = {}
    trials = [t for t in _list(report.get("trials")) if t.get("status") == "ok" and _same_candidate(fit, t)
              and fmt.is_number(t.get("batch_size")) and _latency(t, percentile) is not None]
    for trial in sorted(trials, key=lambda t: rank.get(t.get("phase"), 3)):
        chosen.setdefault(int(trial["batch_size"]), trial)
    return [plots.BatchMeasurement(batch, _latency(t, percentile),
                                   _pair(_dict(_dict(t.get("latency_ms")).get("intervals")).get(percentile)),
                                   str(t.get("phase") or "?"))
            for batch, t in sorted(chosen.items())]


# ---- tuning -------------------------------------------------------------------------------------------------------


def tuning(report: dict, ctx: Context) -> list[dict]:
    trials = _list(report.get("trials"))
    statuses = _list(report.get("backends"))
    sections = []
    for name, color in ctx.colors.items():
        mine = [t for t in trials if str(t.get("backend")) == name]
        status = [s for s in statuses if str(s.get("backend")) == name]
        if not mine and not status:
            continue
        ok = [t for t in mine if t.get("status") == "ok" and _latency(t, ctx.percentile) is not None]
        decisive = [t for t in ok if t.get("phase") == "confirm" and t.get("batch_size") == ctx.batch_size] or \
            [t for t in ok if t.get("batch_size") == ctx.batch_size] or ok
        best = min(decisive, key=lambda t: _latency(t, ctx.percentile), default=None)
        stock = next((t for t in decisive if _dict(t.get("config")).get("stock")), None)
        speedup = None
        if best and stock and best is not stock:
            speedup = _latency(stock, ctx.percentile) / _latency(best, ctx.percentile)
        slowest = max((_latency(t, ctx.percentile) for t in ok), default=None)
        rows = []
        for trial in sorted(mine, key=lambda t: PHASE_ORDER.get(t.get("phase"), 3)):
            value = _latency(trial, ctx.percentile)
            intervals = _dict(_dict(trial.get("latency_ms")).get("intervals"))
            rows.append({**trial, "varying": ctx.varying(trial), "value": value,
                         "interval": intervals.get(ctx.percentile), "best": trial is best,
                         "p50": _dict(trial.get("latency_ms")).get("p50"),
                         "n": _dict(trial.get("latency_ms")).get("n"),
                         "bar": value / slowest * 100 if value and slowest else None,
                         "details": _details_text(trial.get("details")),
                         "summary": tuning_summary(trial.get("details"), full=False)})
        sections.append({
            "name": name, "color": color, "rows": rows, "best": best, "stock": stock, "speedup": speedup,
            "best_varying": ctx.varying(best) if best else None,
            "counts": Counter(str(t.get("status")) for t in mine),
            "reference": fmt.config_text(ctx.reference[name]) if ctx.reference.get(name) else None,
            "reference_is_stock": ctx.reference_is_stock.get(name, False),
            "status": status, "progress": _progress(name, mine, trials, ctx),
        })
    return sections


def _details_text(details) -> str:
    """Every detail of a trial, for the config cell's tooltip: the plotted progress and per-class times left out,
    paths shortened to their last parts (the full path is in report.json)."""
    details = _dict(details)
    if not details:
        return ""
    shown = {k: _short_path(v) if k == "database" else v for k, v in details.items()}
    return fmt.config_text(shown, {"progress", "op_class_ms"})


def _short_path(value, keep: int = 2) -> str:
    text = str(value)
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    return text if len(parts) <= keep else "…/" + "/".join(parts[-keep:])


STOPPED_BY = {"plan": "every task got its share", "deadline": "stopped by deadline",
              "nothing to tune": "nothing left to tune",
              "no time to measure": "no time to measure a round: schedules predicted by the cost model"}


def _count(value, noun: str) -> str:
    return f"{fmt.number(value)} {noun}{'' if value == 1 else 's'}"


def tuning_summary(details, full: bool = True) -> str | None:
    """One line on what a tuning run did, from the trial's details (TVM's MetaSchedule writes these keys, see
    docs/tvm.md): trials on tasks in time and why it stopped, and where the build's kernels came from; `full` adds
    the tasks reused from the database, the cost model's warm start and the records added. None for a trial that
    was not tuned."""
    details = _dict(details)
    number = lambda key: details.get(key) if fmt.is_number(details.get(key)) else None  # noqa: E731
    trials = number("trials_used")
    if trials is None:
        return None
    tasks, tuned, took = number("tasks"), number("tasks_tuned"), number("tuning_time_s")
    head = _count(trials, "trial")
    if tasks is not None:
        head += f" on {fmt.number(tuned)} of {_count(tasks, 'task')}" if tuned is not None else \
            f" over {_count(tasks, 'task')}"
    if took is not None:
        head += f" in {fmt.duration(took)}"
    stopped = details.get("stopped_by")
    if stopped:
        head += f" ({STOPPED_BY.get(str(stopped), f'stopped by {stopped}')})"
    if details.get("tuned_in"):
        head = f"tuned in {details['tuned_in']}: {head}"
    parts = [head]
    if full and number("tasks_reused"):
        parts.append(f"{_count(details['tasks_reused'], 'task')} reused from the database")
    if full and number("warm_start_records"):
        parts.append(f"cost model warm-started on {_count(details['warm_start_records'], 'record')}")
    kernels = [(number(key), label) for key, label in (("functions_from_database", "measured"),
                                                      ("functions_from_cost_model", "predicted by the cost model"),
                                                      ("functions_fallback", "sampled"))]
    if any(n is not None for n, _ in kernels):
        total = number("functions")
        counted = sum(n or 0 for n, _ in kernels)
        of = f" of {fmt.number(total)}" if total is not None and total != counted else ""
        parts.append(f"kernels{of}: " + ", ".join(f"{fmt.number(n or 0)} {label}" for n, label in kernels))
    if full and number("records_added") is not None:
        parts.append(f"{_count(details['records_added'], 'record')} added to the database")
    return "; ".join(parts)


def _progress(name: str, mine: list[dict], trials: list[dict], ctx: Context) -> dict | None:
    """Tuning progress of every trial that recorded one, with reference lines to put it in context."""
    series, facts = [], []
    palette = [ctx.color(name), "#a855f7", "#0ea5e9", "#f97316"]
    for trial in mine:
        details = _dict(trial.get("details"))
        raw = details.get("progress")
        if not isinstance(raw, (list, tuple)):
            continue
        points = tuple((float(p[1]), float(p[2]), float(p[0]) if fmt.is_number(p[0]) else None) for p in raw
                       if isinstance(p, (list, tuple)) and len(p) >= 3 and fmt.is_number(p[1])
                       and fmt.is_number(p[2]) and p[2] > 0)
        if not points:
            continue
        label = ctx.varying(trial)
        series.append(plots.ProgressSeries(label if len(label) < 60 else label[:57] + "…",
                                           palette[len(series) % len(palette)], points))
        facts.append({"trial": trial, "label": label, "summary": tuning_summary(details),
                      "final_ms": points[-1][1]})
    if not series:
        return None
    references = []
    untuned = [t for t in mine if t.get("status") == "ok" and _dict(t.get("details")).get("tuned") is False
               and _latency(t, "p50")]
    if untuned:
        references.append(plots.ReferenceLine("untuned (p50)", min(_latency(t, "p50") for t in untuned), MUTED))
    for other in ctx.colors:
        if other == name:
            continue
        values = [_latency(t, "p50") for t in trials if str(t.get("backend")) == other and t.get("status") == "ok"
                  and t.get("batch_size") == ctx.batch_size and _latency(t, "p50")]
        if values:
            references.append(plots.ReferenceLine(f"best {other} (p50)", min(values), ctx.color(other)))
    if ctx.slo_ms:
        references.append(plots.ReferenceLine(f"SLO ({ctx.percentile})", ctx.slo_ms, SLO))
    return {"plot": plots.tuning_progress(series, references), "facts": facts}


# ---- distributions ------------------------------------------------------------------------------------------------


def distributions(report: dict, ctx: Context) -> dict:
    """The fastest candidates at the SLO batch size (side-by-side confirmation figures preferred), each other
    backend's best and the stock baseline, each with its kept samples."""
    usable = [t for t in _list(report.get("trials")) if t.get("status") == "ok" and
              _dict(t.get("latency_ms")).get("samples_ms") and t.get("batch_size") == ctx.batch_size]
    chosen: dict[str, dict] = {}
    for trial in sorted(usable, key=lambda t: t.get("phase") != "confirm"):
        chosen.setdefault(_config_key(trial), trial)
    ranked = sorted(chosen.values(), key=lambda t: _latency(t, ctx.percentile) or float("inf"))
    top = ranked[:TOP_CANDIDATES]
    # every backend's best too (a slower backend is still worth seeing next to the winner), and the stock baseline
    extra = [next(t for t in ranked if t.get("backend") == b) for b in dict.fromkeys(t.get("backend") for t in ranked)]
    extra.append(next((t for t in ranked if _dict(t.get("config")).get("stock")), None))
    for trial in extra:
        if trial is not None and not any(trial is t for t in top):
            top.append(trial)
    items = []
    for trial in top:
        stats = _dict(trial.get("latency_ms"))
        samples = tuple(float(v) for v in stats.get("samples_ms") or [] if fmt.is_number(v))
        detail = (f"{ctx.percentile} {fmt.ms(stats.get(ctx.percentile))} ms · median {fmt.ms(stats.get('p50'))} ms · "
                  f"{fmt.number(stats.get('n') or len(samples))} runs · {trial.get('phase', '?')}")
        items.append(plots.Distribution(f"{trial.get('backend')} · {ctx.varying(trial)}", detail, samples,
                                        _latency(trial, ctx.percentile), ctx.color(trial.get("backend"))))
    phases = {t.get("phase") for t in top}
    return {"plot": plots.distributions(items, slo_ms=ctx.slo_ms, percentile=ctx.percentile),
            "count": len(items), "side_by_side": phases == {"confirm"}}


# ---- model and roofline -----------------------------------------------------------------------------------------


def model(report: dict, ctx: Context) -> dict:
    info = _dict(report.get("model"))
    flops, moved = info.get("flops"), info.get("bytes_moved")
    intensity = flops / moved if fmt.is_number(flops) and fmt.is_number(moved) and moved else None
    stats = [("FLOPs per inference", fmt.si(flops, "FLOP")), ("parameters", fmt.si(info.get("params"))),
             ("weights", fmt.si(info.get("weight_bytes"), "B")), ("bytes moved", fmt.si(moved, "B")),
             ("arithmetic intensity", f"{intensity:.3g} FLOP/B" if intensity else fmt.DASH),
             ("opset", fmt.number(info.get("opset")))]
    time_ms = info.get("op_class_ms") if isinstance(info.get("op_class_ms"), dict) else None
    signature = [("input", t) for t in _list(info.get("inputs"))] + [("output", t) for t in _list(info.get("outputs"))]
    return {"info": info, "stats": stats, "signature": [(kind, t, _shape(t.get("shape"))) for kind, t in signature],
            "work_plot": plots.work_and_time(_dict(info.get("flops_by_class")), _dict(info.get("bytes_by_class")),
                                             time_ms),
            "mix_plot": plots.operator_mix(_dict(info.get("op_histogram"))),
            "takeaway": _takeaway(info, time_ms), "profiled": bool(time_ms),
            "uncounted": sorted(_dict(info.get("uncounted_ops")).items(), key=lambda kv: str(kv[0])),
            "export": _export(info.get("export"))}


def _export(export) -> dict | None:
    """How a non-ONNX source (PyTorch, Hugging Face) became the measured ONNX file, and how faithful it is: a
    reviewer must know the figures are for an export, and how far its outputs are from the source's."""
    if not isinstance(export, dict):
        return None
    rows = [(label, str(export[key])) for label, key in (("source", "source"), ("kind", "source_kind"),
                                                         ("exporter", "exporter")) if export.get(key) is not None]
    errors = [f"{fmt.number(export[key], 3)} {label}" for label, key in (("max abs", "max_abs_error"),
                                                                        ("max rel", "max_rel_error"))
              if fmt.is_number(export.get(key))]
    rows.append(("outputs vs the source", ", ".join(errors) if errors else "not compared"))
    notes = export.get("notes")
    notes = [str(n) for n in notes if n is not None] if isinstance(notes, (list, tuple)) else \
        ([str(notes)] if notes else [])
    return {"rows": rows, "notes": notes}


def _shape(shape) -> str:
    if not isinstance(shape, (list, tuple)):
        return fmt.DASH if shape is None else str(shape)
    return " × ".join(str(d) for d in shape) if shape else "scalar"


def _takeaway(info: dict, time_ms: dict | None) -> str | None:
    """One sentence on where the time goes: the class taking the most time and its share of the work."""
    times = {k: v for k, v in (time_ms or {}).items() if fmt.is_number(v) and v > 0}
    if not times:
        return None
    name, spent = max(times.items(), key=lambda kv: kv[1])
    share = spent / sum(times.values())
    flops = {k: v for k, v in _dict(info.get("flops_by_class")).items() if fmt.is_number(v)}
    total = sum(flops.values())
    work = f" for {fmt.percent(flops.get(name, 0) / total)} of the FLOPs" if total else ""
    return f"{name.replace('_', ' ')} operators take {fmt.percent(share)} of the profiled time{work}."


def roofline(report: dict, ctx: Context) -> dict | None:
    data = report.get("roofline")
    if not isinstance(data, dict):
        return None
    info = _dict(report.get("model"))
    peak, bandwidth = data.get("peak_gflops"), data.get("peak_bandwidth_gbs")
    achieved_gflops, achieved_gbs = data.get("achieved_gflops"), data.get("achieved_bandwidth_gbs")
    intensity = data.get("arithmetic_intensity")
    if not fmt.is_number(intensity) and fmt.is_number(achieved_gflops) and fmt.is_number(achieved_gbs) and \
            achieved_gbs > 0:
        intensity = achieved_gflops / achieved_gbs
    achieved = plots.RooflinePoint("whole model", intensity, achieved_gflops) if fmt.is_number(intensity) and \
        fmt.is_number(achieved_gflops) else None
    classes = []
    flops, moved = _dict(info.get("flops_by_class")), _dict(info.get("bytes_by_class"))
    for name, spent in _dict(info.get("op_class_ms")).items():
        f, b = flops.get(name), moved.get(name)
        if all(fmt.is_number(v) and v > 0 for v in (spent, f, b)):
            classes.append(plots.RooflinePoint(str(name), f / b, f / (spent / 1000) / 1e9))
    machine = str(data.get("machine") or "this machine")
    ridge = peak / bandwidth if fmt.is_number(peak) and fmt.is_number(bandwidth) and bandwidth else None
    facts = [("machine", machine), ("peak compute", f"{fmt.number(peak)} GFLOP/s" if fmt.is_number(peak) else fmt.DASH),
             ("peak bandwidth", f"{fmt.number(bandwidth)} GB/s" if fmt.is_number(bandwidth) else fmt.DASH),
             ("achieved compute", _of(achieved_gflops, peak, "GFLOP/s")),
             ("achieved bandwidth", _of(achieved_gbs, bandwidth, "GB/s")),
             ("arithmetic intensity", f"{intensity:.3g} FLOP/B" if fmt.is_number(intensity) else fmt.DASH)]
    bound = None
    if ridge and fmt.is_number(intensity):
        bound = "memory-bound" if intensity < ridge else "compute-bound"
        facts.append(("ridge point", f"{ridge:.3g} FLOP/B: the model is {bound} here"))
    above = fmt.is_number(achieved_gbs) and fmt.is_number(bandwidth) and achieved_gbs > bandwidth
    return {"plot": plots.roofline(peak, bandwidth, achieved, classes, machine), "facts": facts,
            "trial_id": data.get("trial_id"), "above_bandwidth": above, "classes": bool(classes)}


def _of(value, peak, unit: str) -> str:
    if not fmt.is_number(value):
        return fmt.DASH
    share = f" ({fmt.percent(value / peak)} of peak)" if fmt.is_number(peak) and peak else ""
    return f"{value:.3g} {unit}{share}"


# ---- failures and environment ---------------------------------------------------------------------------------


def variants(report: dict) -> dict | None:
    """Each reduced-precision variant beside stock and each backend's best fp32: latency ratio and accuracy kept."""
    data = report.get("precision_variants")
    if not isinstance(data, dict) or not _list(data.get("rows")):
        return None
    rows = []
    for row in _list(data.get("rows")):
        accuracy = _dict(row.get("accuracy"))
        calibration = _dict(row.get("calibration"))
        rows.append({
            "backend": row.get("backend"), "target": row.get("target"), "precision": row.get("precision"),
            "stock": bool(row.get("stock")), "status": row.get("status"), "reason": row.get("reason"),
            "p50": fmt.number(row.get("p50_ms"), 3) if isinstance(row.get("p50_ms"), (int, float)) else fmt.DASH,
            "ratio": f"{row['vs_stock']:.2f}×" if isinstance(row.get("vs_stock"), (int, float)) else fmt.DASH,
            "error": fmt.number(row.get("max_rel_error"), 3) if isinstance(row.get("max_rel_error"), (int, float))
            else fmt.DASH,
            "metric": (f"{fmt.number(accuracy.get('value'), 4)} (drop {fmt.number(accuracy.get('drop'), 3)})"
                       if accuracy else fmt.DASH),
            "calibration": ("synthetic inputs" if calibration.get("synthetic") else
                            f"{calibration.get('samples')} samples" if calibration else ""),
        })
    metric = next((_dict(r.get("accuracy")).get("metric") for r in _list(data.get("rows")) if r.get("accuracy")),
                  None)
    return {"rows": rows, "basis": data.get("basis"), "calibration": data.get("calibration_data"),
            "eval_data": data.get("eval_data"), "metric": metric, "max_drop": data.get("max_accuracy_drop")}


def problems(report: dict, ctx: Context) -> dict:
    unavailable = [b for b in _list(report.get("backends")) if not b.get("available", True)]
    trials = [{**t, "varying": ctx.varying(t)} for t in _list(report.get("trials"))
              if t.get("status") in PROBLEM_STATUSES]
    return {"unavailable": unavailable, "trials": trials}


def environment(report: dict) -> dict:
    env = _dict(report.get("environment"))
    cpu_info = _dict(env.get("cpu_info"))
    gpus = [g for g in env.get("gpus") or [] if g]
    gpu_text = ", ".join(_gpu(g) for g in gpus) if gpus else "none"
    took = fmt.elapsed(env.get("started_at"), env.get("finished_at"))
    rows = [("run", f"{fmt.when(env.get('started_at'))} → {fmt.when(env.get('finished_at'))}"
                    + (f" ({fmt.duration(took)})" if took is not None else "")),
            ("advisor", (f"{env.get('advisor') or report.get('advisor_version') or fmt.DASH} · report schema "
                         f"{report.get('schema', fmt.DASH)}")),
            ("Python", " · ".join(str(v) for v in (env.get("python"), env.get("platform")) if v) or fmt.DASH),
            ("CPU", str(env.get("cpu") or fmt.DASH)),
            ("memory", f"{fmt.number(cpu_info.get('memory_gib'))} GiB" if cpu_info.get("memory_gib") else fmt.DASH),
            ("GPUs", gpu_text), ("host", str(env.get("hostname_hash") or fmt.DASH))]
    model_info = _dict(report.get("model"))
    rows += [("model file", str(model_info.get("path") or fmt.DASH)),
             ("model sha256", str(model_info.get("sha256") or fmt.DASH))]
    packages = sorted(_dict(env.get("packages")).items())
    settings = [(str(k), _setting(v)) for k, v in _dict(report.get("settings")).items()
                if v is not None and v != [] and v != {}]
    costmodel = _dict(report.get("costmodel"))
    cost_rows = []
    for target, figures in _dict(costmodel.get("targets")).items():
        figures = _dict(figures)
        fit = _dict(figures.get("fit"))
        cost_rows.append((f"target {target}", f"{figures.get('figures', fmt.DASH)}; "
                                              f"{fit.get('method', 'no fit')}"
                                              + (f", {fit.get('observations')} observations" if fit else "")))
    factors = _dict(costmodel.get("cross_hardware_factors"))
    if factors:
        cost_rows.append(("interval widening", ", ".join(f"{k.replace('_', ' ')} ×{v}" for k, v in factors.items())))
    targets = [(str(t.get("id")), str(t.get("label") or t.get("kind") or fmt.DASH))
               for t in _list(report.get("targets"))]
    return {"rows": rows, "packages": packages, "settings": settings, "costmodel": cost_rows, "targets": targets}


def _gpu(gpu) -> str:
    if not isinstance(gpu, dict):
        return str(gpu)
    parts = [str(gpu.get("name") or gpu.get("model") or "GPU")]
    if gpu.get("memory_gib"):
        parts.append(f"{fmt.number(gpu['memory_gib'])} GiB")
    if gpu.get("driver_version"):
        parts.append(f"driver {gpu['driver_version']}")
    return ", ".join(parts)


def _setting(value) -> str:
    if value is None or value == [] or value == {}:
        return fmt.DASH
    if isinstance(value, dict):
        return fmt.config_text(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, float):
        return fmt.number(value, 4)
    return str(value)


def build(report: dict) -> dict:
    """The template's whole context."""
    ctx = context(report)
    path = str(_dict(report.get("model")).get("path") or "model")
    title = path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or path
    return {"r": report, "ctx": ctx, "title": title, "verdict": verdict(report, ctx), "ranking": ranking(report, ctx),
            "sizing": sizing(report, ctx), "tuning": tuning(report, ctx), "distributions": distributions(report, ctx),
            "model": model(report, ctx), "roofline": roofline(report, ctx), "problems": problems(report, ctx),
            "variants": variants(report),
            "environment": environment(report), "fmt": fmt}
