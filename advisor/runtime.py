"""The artifact runner: `python -m advisor.runtime ARTIFACT` loads an artifact with only its backend's runtime
(plus numpy) and runs it on an .npz of inputs, or serves predictions over HTTP.

    python -m advisor.runtime artifact/ --input feeds.npz --output outputs.npz
    python -m advisor.runtime artifact.tar.gz --serve --port 8080   # POST /predict {"inputs": {name: [...]}}

A generative artifact (kind "llm-engine": a model built for ONNX Runtime GenAI) is served as an OpenAI-compatible
streaming server (advisor.llm.server: /v1/completions, /v1/chat/completions, /v1/models, /health), or, without
--serve, generates greedily from --prompt:

    python -m advisor.runtime artifact/ --serve --port 8000 [--max-queue 64] [--max-batch-size 8]
    python -m advisor.runtime artifact/ --prompt "Hello" --max-tokens 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from advisor.checksums import file_sha256

MANIFEST = "manifest.json"


class ArtifactError(Exception):
    """The artifact is missing, malformed or modified."""


def check_artifact(folder: Path) -> dict:
    """Read the manifest and verify every file's sha256; raises ArtifactError on any mismatch."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{folder} is not an advisor artifact (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError:
        raise ArtifactError(f"{manifest_path} is not valid JSON") from None
    if manifest.get("schema") != "advisor.artifact/v1":
        raise ArtifactError(f"{manifest_path}: unsupported artifact schema {manifest.get('schema')!r}")
    root = folder.resolve()
    for relative, expected in manifest.get("files", {}).items():
        path = (root / relative).resolve()
        if root not in path.parents:
            raise ArtifactError(f"artifact manifest lists {relative!r}, which is outside the artifact")
        if not path.is_file():
            raise ArtifactError(f"artifact file {relative} is missing")
        if file_sha256(path) != expected:
            raise ArtifactError(f"artifact file {relative} was modified (sha256 mismatch)")
    return manifest


def load(folder: Path) -> tuple[dict, Callable[[Mapping[str, np.ndarray]], list]]:
    """Verify and load an artifact folder; returns its manifest and a feeds -> outputs function."""
    from tuners.registry import load_tuner

    manifest = check_artifact(folder)
    tuner = load_tuner(manifest["backend"])
    return manifest, tuner.load_exported(Path(folder) / "model", manifest.get("runtime", {}))


def safe_extract(tarball: Path, dest: Path) -> Path:
    """Extract an artifact tarball, refusing absolute paths, `..`, links and special files; returns its root."""
    dest = Path(dest).resolve()
    try:
        with tarfile.open(tarball, "r:*") as archive:
            members = archive.getmembers()
            for member in members:
                target = (dest / member.name).resolve()
                if member.name.startswith("/") or (target != dest and dest not in target.parents):
                    raise ArtifactError(f"refusing {tarball}: member {member.name!r} escapes the destination")
                if member.issym() or member.islnk() or not (member.isfile() or member.isdir()):
                    raise ArtifactError(f"refusing {tarball}: member {member.name!r} is a link or special file")
            archive.extractall(dest, members=members, filter="data")
    except tarfile.TarError as error:
        raise ArtifactError(f"{tarball} is not a readable tar archive ({error})") from None
    roots = {Path(m.name).parts[0] for m in members if Path(m.name).parts}
    return dest / roots.pop() if len(roots) == 1 else dest


def sample_feeds(manifest: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the artifact's recorded shapes and dtypes when no real ones are given: random floats, ones
    elsewhere (valid ids and masks for any vocabulary)."""
    shapes = manifest["input_shapes"]
    rng = np.random.default_rng(seed)
    return {spec["name"]: (rng.standard_normal(shapes[spec["name"]]).astype(spec["dtype"])
                           if spec["dtype"].startswith("float") else np.ones(shapes[spec["name"]], spec["dtype"]))
            for spec in manifest["inputs"]}


def open_artifact(path: Path, scratch: Path) -> Path:
    """A folder as is; a .tar.gz safely extracted into `scratch`."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"artifact not found: {path}")
    return path if path.is_dir() else safe_extract(path, scratch)


def _serve(manifest: dict, predict, port: int) -> None:
    names = [spec["name"] for spec in manifest["inputs"]]
    dtypes = {spec["name"]: spec["dtype"] for spec in manifest["inputs"]}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self._reply(200, {"status": "ok", "backend": manifest["backend"]})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/predict":
                return self._reply(404, {"error": "not found"})
            try:
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length))
                feeds = {name: np.asarray(payload["inputs"][name], dtype=dtypes[name]) for name in names}
                outputs = predict(feeds)
            except (KeyError, ValueError, TypeError) as error:
                return self._reply(400, {"error": f"bad request: {error}"})
            self._reply(200, {"outputs": [np.asarray(o).tolist() for o in outputs]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"serving {manifest['backend']} artifact on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


LLM_ENGINE = "llm-engine"


def _kind(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None  # check_artifact, run next, says what is wrong


def _run_llm(folder: Path, args) -> int:
    """Serve a generative artifact over the OpenAI-compatible API, or generate once from --prompt."""
    from advisor.errors import UserError
    from advisor.llm.engine_api import GenerationRequest
    from advisor.llm.engine_artifact import load_engine_artifact
    from advisor.llm.server import ServerSettings, serve_forever

    try:
        engine = load_engine_artifact(folder, max_batch_size=args.max_batch_size)
        if args.serve:
            settings = ServerSettings(host=args.host, port=8000 if args.port is None else args.port,
                                      max_queue=args.max_queue)
            try:
                serve_forever(engine, settings)
            finally:
                engine.close()
            return 0
        sequence = engine.add(GenerationRequest(tuple(engine.encode(args.prompt)), args.max_tokens))
        decoder, text, finished = engine.new_decoder(), [], False
        while not finished:
            for event in engine.step():
                if event.sequence_id == sequence:
                    text.append(decoder.add(event.token_id))
                    finished = event.finished
        engine.close()
        print("".join(text))
        return 0
    except (UserError, ValueError) as error:
        print(f"advisor.runtime: error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advisor.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="artifact folder or .tar.gz")
    parser.add_argument("--input", type=Path, help=".npz with one array per model input")
    parser.add_argument("--output", type=Path, help="where to write the outputs (.npz)")
    parser.add_argument("--serve", action="store_true", help="serve POST /predict over HTTP on 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default 8080 (8000 for a generative artifact)")
    parser.add_argument("--host", default="127.0.0.1", help="generative artifacts: the address to bind")
    parser.add_argument("--max-queue", type=int, default=64, help="generative artifacts: waiting requests before 429")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="generative artifacts: sequences served at once (default: the manifest's)")
    parser.add_argument("--prompt", default="Hello", help="generative artifacts without --serve: the prompt")
    parser.add_argument("--max-tokens", type=int, default=16, help="generative artifacts without --serve")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            folder = open_artifact(args.artifact, Path(scratch))
            if _kind(folder) == LLM_ENGINE:
                return _run_llm(folder, args)
            manifest, predict = load(folder)
        except (ArtifactError, OSError) as error:
            print(f"advisor.runtime: error: {error}", file=sys.stderr)
            return 2
        if args.serve:
            _serve(manifest, predict, args.port or 8080)
            return 0
        if args.input is None:
            feeds = sample_feeds(manifest)
        else:
            with np.load(args.input) as data:
                feeds = {name: data[name] for name in data.files}
        outputs = predict(feeds)
        if args.output:
            np.savez(args.output, **{spec["name"]: out for spec, out in zip(manifest["outputs"], outputs)})
        for spec, out in zip(manifest["outputs"], outputs):
            out = np.asarray(out)
            print(f"{spec['name']}: shape {list(out.shape)} dtype {out.dtype} mean {float(out.mean()):.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
