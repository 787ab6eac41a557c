"""`advisor verify ARTIFACT [--model original.onnx]`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="The original model (default: the path recorded in the manifest).")
def verify(artifact, model):
    """Check an artifact's checksums, run it, compare its outputs with the original model and measure whether
    the SLO holds on this machine.

    Exit status: 0 all hold, 2 the artifact is missing, malformed or modified, 3 the SLO does not hold here,
    4 outputs differ from the original model beyond the tolerance.

    An LLM serving artifact (a vLLM deployment) is checked without starting a server: checksums, a consistent
    deployment, and launch.sh, k8s.yaml and bench.sh running what deployment.json says with valid vLLM flags.

    An llm-engine artifact (ONNX Runtime GenAI on a CPU) is loaded, checked again against the transformers
    reference on the original weights (--model HF_FOLDER, default the folder it was built from; exit 4 when it
    differs) and timed here one sequence at a time.
    """
    from advisor.verify import LLM_ENGINE, LLM_SERVING, verify as run_verify

    result = run_verify(artifact, model)
    manifest = result.manifest
    if manifest.get("kind") == LLM_ENGINE:
        for line in result.lines:
            click.echo(line)
        return result.exit_code
    if manifest.get("kind") == LLM_SERVING:
        if model is not None:
            click.echo("--model: not used (an llm-serving artifact holds a vLLM deployment, no model to compare)")
        for line in result.lines:
            click.echo(line)
        return result.exit_code
    slo = manifest["slo"]
    click.echo(f"checksums: ok ({len(manifest['files'])} files)")
    click.echo(f"loaded: {manifest['backend']} artifact, config {manifest['config']}")
    if result.numerics is None:
        click.echo(f"outputs: not checked ({result.numerics_note})")
    else:
        status = "ok" if result.numerics.passed else "DIFFER"
        click.echo(f"outputs: {status} (max abs error {result.numerics.max_abs_error:.3g}, max rel error "
                   f"{result.numerics.max_rel_error:.3g}, tolerance {result.numerics.tolerance:g})")
    low, high = result.latency.intervals[slo["percentile"]]
    click.echo(f"latency here: {slo['percentile']} {result.latency.at(slo['percentile']):.3f} ms "
               f"[{low:.3f}, {high:.3f}] over {result.latency.n} runs; SLO {slo['latency_ms']:g} ms: "
               f"{result.verdict.verdict}")
    expected = manifest.get("expected") or {}
    if expected.get("latency_ms") is not None:
        click.echo(f"expected (report): {expected['latency_ms']:.3f} ms on {expected.get('instance')}")
    return result.exit_code
