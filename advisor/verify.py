"""`advisor verify`: prove an artifact does what the report said: intact, loadable, numerically faithful to
the original model, and within the SLO on this machine."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from advisor.errors import UserError
from advisor.executor import fp32_noise_floor, fp32_tolerance, reference_outputs
from advisor.feeds import make_feeds
from advisor.measure import HarnessSettings, LatencyStats, NumericCheck, compare_outputs, time_calls
from advisor.model import ModelSpec, analyze
from advisor.runtime import ArtifactError, load, open_artifact
from advisor.slo import Slo, SloVerdict, judge

if TYPE_CHECKING:
    from advisor.llm.verify_engine import EngineVerifyResult
    from advisor.llm.verify_llm import LlmVerifyResult

EXIT_OK = 0
EXIT_SLO_NOT_MET = 3
EXIT_OUTPUTS_DIFFER = 4
LLM_SERVING = "llm-serving"  # manifest["kind"] of a generative LLM's vLLM deployment (advisor.llm.serving_artifact)
LLM_ENGINE = "llm-engine"  # manifest["kind"] of an LLM built for ONNX Runtime GenAI (advisor.llm.engine_artifact)


@dataclass(frozen=True)
class VerifyResult:
    manifest: dict
    numerics: NumericCheck | None  # always compared now; kept optional for callers that print it
    numerics_note: str | None
    latency: LatencyStats
    verdict: SloVerdict

    @property
    def exit_code(self) -> int:
        if self.numerics is not None and not self.numerics.passed:
            return EXIT_OUTPUTS_DIFFER
        return EXIT_OK if self.verdict.meets else EXIT_SLO_NOT_MET


def _kind(folder: Path) -> str | None:
    """The manifest's kind, read leniently: an unreadable manifest is reported by the checks that follow."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest.get("kind") if isinstance(manifest, dict) else None


def verify(artifact: Path, model: Path | None = None,
           harness: HarnessSettings | None = None) -> VerifyResult | LlmVerifyResult | EngineVerifyResult:
    """Verify an artifact folder or tarball. An llm-serving artifact (a vLLM deployment) is checked by
    advisor.llm.verify_llm and gives an LlmVerifyResult; every other artifact is loaded, run and timed here."""
    harness = harness or HarnessSettings()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            folder = open_artifact(artifact, Path(scratch))
            if _kind(folder) == LLM_SERVING:
                from advisor.llm.verify_llm import verify_serving_artifact

                return verify_serving_artifact(folder)
            if _kind(folder) == LLM_ENGINE:
                from advisor.llm.verify_engine import verify_engine_artifact

                return verify_engine_artifact(folder, model)
            manifest, predict = load(folder)
        except ArtifactError as error:
            raise UserError(str(error)) from None
        source = model or Path(manifest["source_model"]["path"])
        batch = int(manifest.get("batch_size", 1))
        shapes = {name: tuple(shape) for name, shape in manifest["input_shapes"].items()}
        if not source.is_file():
            # exit 0 means every check held: outputs that could not be compared are not a pass
            raise UserError(f"the original model {source} is not found; pass --model ORIGINAL.onnx to compare the "
                            "artifact's outputs with it")
        info = analyze(ModelSpec(source, shapes))
        if info.sha256 != manifest["source_model"]["sha256"]:
            raise UserError(f"{source} is not the model this artifact was built from (sha256 differs)")
        feeds = make_feeds(info, batch)
        reduced = manifest["config"].get("precision", "fp32") != "fp32"
        reference = reference_outputs(source, feeds)
        # the same calibration as the run: this model's fp32 noise floor, measured here
        tolerance = fp32_tolerance(fp32_noise_floor(source, feeds, reference))
        if reduced:
            tolerance = max(tolerance, manifest.get("tolerance", tolerance))
        numerics = compare_outputs(predict(feeds), reference, tolerance)
        samples = time_calls(lambda: predict(feeds), harness).samples_ms
        latency = LatencyStats.from_samples(samples, harness.confidence, harness.bootstrap_resamples)
        slo = Slo(manifest["slo"]["latency_ms"], manifest["slo"]["percentile"])
        verdict = judge(slo, latency.at(slo.percentile), latency.intervals[slo.percentile])
        return VerifyResult(manifest, numerics, None, latency, verdict)
