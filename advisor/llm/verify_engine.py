"""`advisor verify` for an llm-engine artifact (a generative model built for ONNX Runtime GenAI on a CPU):

1. every file's sha256 matches manifest.json (exit 2 otherwise, as for any modified artifact);
2. the engine loads and generates;
3. its greedy output is checked again against the transformers reference on the original weights (the rule of its
   precision, advisor.llm.reference; exit 4 when it fails) - the original folder is the manifest's build source or
   --model;
4. its time to first token and inter-token latency are measured here, one sequence at a time, beside the figures
   measured in the run that made it (informative: the SLOs apply under load, which `advisor bench-serve` against
   `python -m advisor.runtime ARTIFACT --serve` measures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from advisor.errors import UserError
from advisor.isolation import run_isolated
from advisor.runtime import ArtifactError, check_artifact

EXIT_OK = 0
EXIT_OUTPUTS_DIFFER = 4
CHECK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class EngineVerifyResult:
    manifest: dict
    lines: tuple[str, ...]
    passed: bool  # the reference check held

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_OUTPUTS_DIFFER


def _check(source: Path, built) -> dict:
    from advisor.llm.reference import check_against_reference

    return check_against_reference(source, built).to_dict()


def _generate(folder: Path) -> tuple[str, int]:
    from advisor.llm.engine_api import GenerationRequest
    from advisor.llm.engine_artifact import load_engine_artifact

    engine = load_engine_artifact(folder)
    try:
        sequence = engine.add(GenerationRequest(tuple(engine.encode("Hello")), 8, ignore_eos=True))
        tokens = []
        while engine.active:
            tokens += [e.token_id for e in engine.step() if e.sequence_id == sequence]
        return engine.model_name, len(tokens)
    finally:
        engine.close()


def verify_engine_artifact(folder: Path, model: Path | None = None) -> EngineVerifyResult:
    from advisor.llm.engine import BuiltModel, EngineError
    from advisor.llm.engine_artifact import MODEL_DIR
    from advisor.llm.measure_local import LocalMeasureSettings, measure_local

    folder = Path(folder)
    try:
        manifest = check_artifact(folder)
    except ArtifactError as error:
        raise UserError(str(error)) from None
    source = Path(model) if model else Path(manifest.get("build", {}).get("source", ""))
    if not (source / "config.json").is_file():
        raise UserError(f"the original model folder {source} is not found; pass --model HF_FOLDER to check the "
                        "engine against it")
    lines = [f"checksums: ok ({len(manifest['files'])} files)"]
    try:
        name, generated = _generate(folder)
    except EngineError as error:
        raise UserError(f"the engine does not load: {error}") from None
    lines.append(f"loaded: {manifest['backend']} {manifest['precision']} engine serving {name!r}; generated "
                 f"{generated} tokens")
    built = BuiltModel(folder / MODEL_DIR, manifest["precision"], source, 0.0, ())
    checked = run_isolated(_check, (source, built), timeout_s=CHECK_TIMEOUT_S)
    if not checked.ok:
        raise UserError(f"the reference check could not run: {checked.reason}")
    check = checked.value
    lines.append(f"outputs: {'ok' if check['passed'] else 'DIFFER'} against transformers on {source} "
                 f"({check['rule']}; {check['detail']})")
    measured = measure_local(built, source, LocalMeasureSettings(prompt_lengths=(32,), batch_sizes=(1,),
                                                                 new_tokens=16, repeats=5))
    recorded = (manifest.get("measured") or {})
    then = recorded.get("ttft_ms") or {}
    then_itl = recorded.get("itl_ms") or {}
    lines.append(f"latency here (one sequence): TTFT p50 {measured.ttft_ms['p50']:.3g} ms, inter-token p50 "
                 f"{measured.itl_ms['p50']:.3g} ms"
                 + (f"; in the run that made it: {then['p50']:.3g} ms and {then_itl['p50']:.3g} ms"
                    if then.get("p50") and then_itl.get("p50") else ""))
    return EngineVerifyResult(manifest, tuple(lines), bool(check["passed"]))
