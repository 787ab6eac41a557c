"""A backend that fails for real, registered through ADVISOR_TUNERS, to prove a bad backend cannot take a run
down: its candidates segfault, abort, hang, exhaust memory or raise, and a last one works."""

from __future__ import annotations

import faults

from tuners.base import Availability, ExportedFiles, StagedSearch, Tuner
from tuners.onnxruntime import OnnxRuntimeTuner, stock_config

FAULTS = ("segfault", "abort", "hang", "oom", "raise")


class FaultyTuner(Tuner):
    name = "faulty"

    def probe(self, target):
        return Availability.yes() if target.kind == "cpu" else Availability.no("CPU only")

    def search(self, ctx):
        def faulty(best):
            return [{**best, "fault": fault} for fault in FAULTS]

        return StagedSearch("faulty", ctx.target.id, {**stock_config(), "fault": "none"}, [faulty])

    def build(self, candidate, ctx):
        fault = candidate.config["fault"]
        if fault == "segfault":
            faults.segfault()
        elif fault == "abort":
            faults.abort()
        elif fault == "hang":
            faults.hang()
        elif fault == "oom":
            faults.allocate(4096)
        elif fault == "raise":
            raise RuntimeError("the compiler rejected operator 'Frobnicate'")
        config = {k: v for k, v in candidate.config.items() if k != "fault"}
        return OnnxRuntimeTuner().build(type(candidate)("onnxruntime", candidate.target, config), ctx)

    def export(self, candidate, ctx, dest) -> ExportedFiles:
        config = {k: v for k, v in candidate.config.items() if k != "fault"}
        return OnnxRuntimeTuner().export(type(candidate)("onnxruntime", candidate.target, config), ctx, dest)

    def load_exported(self, folder, runtime):
        return OnnxRuntimeTuner().load_exported(folder, runtime)


class CrashingTvmTuner(Tuner):
    """The TVM backend whose worker segfaults right after TVM has compiled the model (a crash inside TVM's
    process, as a miscompiled kernel or a runtime bug would cause)."""

    name = "crashtvm"

    def __init__(self):
        from tuners.tvm import TvmTuner

        self.tvm = TvmTuner()

    def probe(self, target):
        return self.tvm.availability(target)

    def search(self, ctx):
        inner = self.tvm.search(ctx)
        return StagedSearch("crashtvm", ctx.target.id, inner.ask()[0].config, [])

    def build(self, candidate, ctx):
        self.tvm.build(type(candidate)("tvm", candidate.target, dict(candidate.config)), ctx)
        faults.segfault()

    def export(self, candidate, ctx, dest) -> ExportedFiles:
        raise RuntimeError("never exported: every build crashes")

    def load_exported(self, folder, runtime):
        raise RuntimeError("never exported")


class RejectingTuner(FaultyTuner):
    """Every build fails, the stock configuration's included: the run has no valid candidate at all."""

    name = "rejecting"

    def search(self, ctx):
        return StagedSearch("rejecting", ctx.target.id, {**stock_config(), "fault": "raise"}, [])
