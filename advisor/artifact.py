"""The deployable artifact: a ranked candidate (the winner, or any row via `advisor package`) in deployable form,
a manifest with checksums, a tarball."""

from __future__ import annotations

import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from advisor.environment import now_iso
from advisor.isolation import run_isolated
from advisor.checksums import file_sha256
from advisor.model import ModelInfo
from advisor.runfolder import write_json_atomic
from advisor.slo import Slo
from advisor.trials import Trial
from tuners.base import Candidate, ExportedFiles, TuneContext

MANIFEST = "manifest.json"
SCHEMA = "advisor.artifact/v1"


def _export_in_child(candidate: Candidate, ctx: TuneContext, dest: Path) -> tuple[ExportedFiles, dict]:
    from tuners.registry import load_tuner

    tuner = load_tuner(candidate.backend)
    return tuner.export(candidate, ctx, dest), tuner.versions()


@dataclass(frozen=True)
class ArtifactRequest:
    trial: Trial
    ctx: TuneContext
    slo: Slo
    expected: dict  # the ranking row it was chosen from: instance, source, latency and interval, cost


def build_artifact(request: ArtifactRequest, dest: Path, timeout_s: float, log_path: Path | None) -> Path:
    """Export the candidate (isolated: compilers may crash), write manifest.json, and pack DEST.tar.gz.

    Everything is written into DEST.partial/ and renamed to DEST at the end, so DEST is only ever a whole
    artifact (an interrupted export leaves the previous one, or none)."""
    final = dest
    dest = final.with_name(final.name + ".partial")
    if dest.exists():
        shutil.rmtree(dest)
    model_dir = dest / "model"
    candidate = Candidate(request.trial.backend, request.trial.target, dict(request.trial.config))
    result = run_isolated(_export_in_child, (candidate, request.ctx, model_dir), timeout_s=timeout_s,
                          log_path=log_path)
    if not result.ok:
        raise RuntimeError(f"exporting the {candidate.backend} artifact failed: {result.reason}")
    exported, versions = result.value
    info: ModelInfo = request.ctx.info
    files = {str(path.relative_to(dest)): file_sha256(path) for path in sorted(model_dir.rglob("*")) if path.is_file()}
    manifest = {
        "schema": SCHEMA,
        "created_at": now_iso(),
        "instance": request.expected.get("instance"),  # the ranked instance it was packaged for
        "backend": candidate.backend,
        "versions": versions,
        "target": request.ctx.target.to_dict(),
        "config": dict(candidate.config),
        "batch_size": request.trial.batch_size,
        "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in info.inputs],
        "input_shapes": {name: list(shape) for name, shape in info.shapes_at(request.trial.batch_size).items()},
        "outputs": [s.to_dict() for s in info.outputs],
        "runtime": exported.runtime,
        "requirements": list(exported.requirements),
        "expected": request.expected,
        "slo": request.slo.to_dict(),
        "tolerance": request.ctx.tolerance,
        "source_model": {"path": str(info.path), "sha256": info.sha256},
        "files": files,
    }
    write_json_atomic(dest / MANIFEST, manifest)
    return publish_artifact(dest, final)


def publish_artifact(partial: Path, final: Path) -> Path:
    """Pack the finished folder `partial` as FINAL.tar.gz and move it to FINAL, each by a rename, so FINAL and its
    tarball are only ever whole artifacts (an interrupted run leaves the previous ones)."""
    tarball = final.with_name(final.name + ".tar.gz")
    tar_partial = tarball.with_name(tarball.name + ".partial")
    with tarfile.open(tar_partial, "w:gz") as archive:
        archive.add(partial, arcname=final.name)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    tar_partial.replace(tarball)
    return final
