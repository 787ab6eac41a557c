"""The deployable artifact of a generative model served on a CPU by ONNX Runtime GenAI: the built model folder under
model/, and manifest.json (schema advisor.artifact/v1, kind "llm-engine") with the sha256 of every file, the runtime
requirements, how it was built, and optionally the reference check and the measured figures. Written as
DEST.partial/, renamed to DEST, packed as DEST.tar.gz (advisor.artifact.publish_artifact), like the other artifacts.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict
from pathlib import Path

from advisor.artifact import publish_artifact
from advisor.checksums import file_sha256
from advisor.environment import now_iso
from advisor.llm.engine import DEFAULT_MAX_BATCH_SIZE, ENGINE_NAME, BuiltModel, EngineError, OrtGenaiEngine
from advisor.llm.reference import ReferenceCheck
from advisor.runfolder import write_json_atomic

SCHEMA = "advisor.artifact/v1"
KIND = "llm-engine"
MANIFEST = "manifest.json"
MODEL_DIR = "model"


def write_engine_artifact(built: BuiltModel, dest: Path, *, served_model_name: str,
                          check: ReferenceCheck | None = None, measured: dict | None = None) -> Path:
    """Write the artifact folder DEST (model/ and manifest.json) and DEST.tar.gz; returns DEST."""
    import onnxruntime_genai as og

    final = Path(dest)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    shutil.copytree(built.folder, partial / MODEL_DIR)
    files = {str(path.relative_to(partial)): file_sha256(path)
             for path in sorted((partial / MODEL_DIR).rglob("*")) if path.is_file()}
    manifest = {
        "schema": SCHEMA,
        "kind": KIND,
        "created_at": now_iso(),
        "backend": ENGINE_NAME,
        "precision": built.precision,
        "served_model_name": served_model_name,
        "versions": {ENGINE_NAME: og.__version__, "python": platform.python_version()},
        "runtime": {"engine": ENGINE_NAME, "execution_provider": "cpu", "model_dir": MODEL_DIR,
                    "max_batch_size": DEFAULT_MAX_BATCH_SIZE, "decoding": "greedy"},
        "requirements": [f"onnxruntime-genai=={og.__version__}", "tokenizers", "numpy"],
        "build": {"source": str(built.source), "builder_command": list(built.builder_command),
                  "build_s": built.build_s},
        "reference_check": asdict(check) if check is not None else None,
        "measured": measured,
        "files": files,
    }
    write_json_atomic(partial / MANIFEST, manifest)
    os.chmod(partial / MANIFEST, 0o644)  # write_atomic makes 0600 files; the artifact is read by whoever deploys it
    return publish_artifact(partial, final)


def load_engine_artifact(folder: Path, *, max_batch_size: int | None = None) -> OrtGenaiEngine:
    """Verify the artifact (every file's sha256, advisor.runtime.check_artifact) and load its engine, serving under
    the manifest's served_model_name. EngineError (one line) when it is not an llm-engine artifact or a file was
    changed."""
    from advisor.runtime import ArtifactError, check_artifact

    folder = Path(folder)
    try:
        manifest = check_artifact(folder)
    except ArtifactError as error:
        raise EngineError(str(error)) from None
    if manifest.get("kind") != KIND or manifest.get("backend") != ENGINE_NAME:
        raise EngineError(f"{folder} is a {manifest.get('kind') or manifest.get('backend') or 'different'} artifact, "
                          f"not an {ENGINE_NAME} {KIND} artifact")
    runtime = manifest.get("runtime", {})
    return OrtGenaiEngine(folder / runtime.get("model_dir", MODEL_DIR),
                          max_batch_size=max_batch_size or int(runtime.get("max_batch_size", DEFAULT_MAX_BATCH_SIZE)),
                          name=manifest.get("served_model_name"))
