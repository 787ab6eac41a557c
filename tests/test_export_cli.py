"""`advisor export SOURCE` and `advisor recommend SOURCE` on real PyTorch and transformers sources, built here with
random weights (nothing downloaded): exact output, one-line errors, report.json's `model.export`, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from advisor.exporting.run_export import fill_named_axes
from advisor.model import ModelSpec, analyze
from test_cli import invoke, one_line_error
from test_exporting import EXPORTERS, _dims, encoder_dir  # noqa: F401  (encoder_dir: fixture shared with the library)

torch = pytest.importorskip("torch")

CNN_SOURCE = '''
import torch


def build():
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 10))
'''
CNN_SHAPE = ("--input-shape", "image=1,3,16,16")
HUB_ERROR = ("advisor: error: bert-base-uncased is not a local path; advisor does not download models: download it "
             "first, e.g. `huggingface-cli download bert-base-uncased --local-dir ./bert-base-uncased`, then pass "
             "that folder\n")
TINY_RUN = ("--budget", "30s", "--backends", "onnxruntime", "--min-time", "0.1s", "--batch-sizes", "1,2",
            "--no-artifact", "-q")


@pytest.fixture(scope="module")
def cnn_source(tmp_path_factory) -> str:
    """A torchvision-free tiny CNN as a `file.py:callable` source."""
    folder = tmp_path_factory.mktemp("usercode")
    (folder / "tiny_cnn.py").write_text(CNN_SOURCE)
    return f"{folder / 'tiny_cnn.py'}:build"


@pytest.fixture(scope="module")
def encoder_json(encoder_dir, tmp_path_factory):  # noqa: F811
    """`advisor export HF_FOLDER -o FOLDER --external-data --json`: the result and where it went."""
    out = tmp_path_factory.mktemp("bert_out")
    result = invoke("export", encoder_dir, "-o", out, "--external-data", "--json")
    return result, out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------- advisor export

@pytest.mark.slow
def test_export_cnn_callable(cnn_source, tmp_path):
    out = tmp_path / "cnn.onnx"
    result = invoke("export", cnn_source, "-o", out, *CNN_SHAPE)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"exported {cnn_source} (callable) to {out}"
    assert lines[1].removeprefix("exporter: ") in EXPORTERS
    assert lines[2].startswith("numerical difference vs torch (ONNX Runtime, same inputs): max abs ")
    max_abs = float(lines[2].split("max abs ")[1].split(",")[0])
    assert 0 <= max_abs < 1e-5
    assert lines[3:5] == ["input image: float32 [batch, 3, 16, 16]", "output output: float32 [batch, 10]"]
    assert all(line.startswith("note: ") for line in lines[5:])
    model = onnx.load(str(out))
    assert _dims(model.graph.input) == {"image": ["batch", 3, 16, 16]}
    # the exported model runs at another batch size and agrees with torch there
    sys.path.insert(0, str(Path(cnn_source.rsplit(":", 1)[0]).parent))
    try:
        import tiny_cnn
    finally:
        sys.path.pop(0)
    images = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = tiny_cnn.build().eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(_session(out).run(None, {"image": images})[0], expected, atol=1e-5)


@pytest.mark.slow
def test_export_hf_encoder_json(encoder_json, encoder_dir):  # noqa: F811
    result, out = encoder_json
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {"onnx_path", "source", "source_kind", "exporter", "max_abs_error", "max_rel_error", "notes"}
    assert data["onnx_path"] == str(out / "model.onnx")  # an existing folder gets model.onnx
    assert (data["source"], data["source_kind"]) == (str(encoder_dir), "huggingface")
    assert data["exporter"] in EXPORTERS
    assert 0 <= data["max_abs_error"] < 1e-4 and 0 <= data["max_rel_error"] < 1e-4
    assert "task inferred as feature-extraction from BertModel" in data["notes"]
    assert (out / "model.onnx.data").is_file()  # --external-data
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert _dims(model.graph.input)["input_ids"] == ["batch", "sequence"]


@pytest.mark.slow
def test_input_shape_spreads_over_named_axes(encoder_json):
    """What recommend does with an exported text model: input_ids=1,24 sizes every input's `sequence` axis."""
    _, out = encoder_json
    shapes = fill_named_axes(out / "model.onnx", {"input_ids": (1, 24)})
    assert shapes == {"input_ids": (1, 24), "attention_mask": (1, 24), "token_type_ids": (1, 24)}
    info = analyze(ModelSpec(out / "model.onnx", shapes))
    assert info.batch_axis and info.input_shapes["attention_mask"] == (1, 24)


def test_export_hub_id_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("export", "bert-base-uncased", "-o", tmp_path / "out.onnx")
    assert result.exit_code == 2
    assert result.output == HUB_ERROR
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "advisor: error: model file not found: missing.pt\n"),
    (["missing.onnx"], "advisor: error: model file not found: missing.onnx\n"),
    (["notes.txt"], "advisor: error: notes.txt: unsupported model file type '.txt'; give an ONNX file, "),
    (["tiny_cnn.py:build"], "advisor: error: tiny_cnn.py:build: give the shape of each input with --input-shape "),
    (["tiny_cnn.py:nope", *CNN_SHAPE], "advisor: error: tiny_cnn.py:nope: "),
    (["tiny_cnn.py:build", "--opset", "99"], "advisor: error: Invalid value for '--opset': 99 is not in the range"),
    (["tiny_cnn.py:build", "--input-shape", "image=1,0"], "advisor: error: Invalid value for '--input-shape'"),
])
def test_export_bad_input_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "tiny_cnn.py").write_text(CNN_SOURCE)
    result = invoke("export", *args, "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 2
    assert one_line_error(result).startswith(message), result.output
    assert not list(tmp_path.glob("out/*")), "no model and no staging folder left behind"


def test_export_without_torch_names_the_extra(tmp_path):
    """torch made unimportable in a fresh interpreter: the error names the extra, with no traceback."""
    (tmp_path / "tiny_cnn.py").write_text(CNN_SOURCE)
    script = "import sys; sys.modules['torch'] = None; from advisor.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", script, "export", "tiny_cnn.py:build", "-o", "m.onnx", *CNN_SHAPE],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 2
    assert done.stderr == ("advisor: error: exporting a PyTorch model needs torch, which is not installed "
                           "(pip install 'advisor[export]')\n")
    assert done.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["tiny_cnn.py"]


def test_export_has_help():
    result = invoke("export", "--help")
    assert result.exit_code == 0
    for flag in ("--output", "--opset", "--fp16", "--task", "--input-shape", "--external-data / --no-external-data"):
        assert flag in result.output


# ---------------------------------------------------------------------------------------- advisor recommend SOURCE

@pytest.mark.slow
def test_recommend_from_a_callable_and_resume(cnn_source, tmp_path):
    run = tmp_path / "run"
    result = invoke("recommend", cnn_source, "--slo", "50ms", *CNN_SHAPE, "--out", run, *TINY_RUN)
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    model = report["model"]
    assert model["path"] == str(run / "model.onnx") and (run / "model.onnx").is_file()
    export = model["export"]
    assert set(export) >= {"source", "source_kind", "exporter", "max_abs_error", "max_rel_error", "notes"}
    assert (export["source"], export["source_kind"]) == (cnn_source, "callable")
    assert export["exporter"] in EXPORTERS and export["onnx_path"] == model["path"]
    assert 0 <= export["max_abs_error"] < 1e-5 and 0 <= export["max_rel_error"] < 1e-5
    assert export["options"]["opset"] == 17 and export["options"]["input_shapes"] == {"image": [1, 3, 16, 16]}
    assert model["inputs"][0] == {"name": "image", "shape": ["batch", 3, 16, 16], "dtype": "float32"}
    assert any(t["status"] == "ok" for t in report["trials"])
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "the staging folder is removed"

    # --resume reuses the exported file (not even rewritten) and every trial
    stat = (run / "model.onnx").stat()
    lines = (run / "trials.jsonl").read_text().count("\n")
    result = invoke("recommend", cnn_source, "--slo", "50ms", *CNN_SHAPE, "--out", run, "--resume", *TINY_RUN)
    assert result.exit_code == 0, result.output
    again = (run / "model.onnx").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert (run / "trials.jsonl").read_text().count("\n") == lines
    assert json.loads((run / "report.json").read_text())["model"]["export"] == export

    # a resume with another export option exports again, is refused, and leaves the run's model alone
    result = invoke("recommend", cnn_source, "--slo", "50ms", *CNN_SHAPE, "--opset", "16", "--out", run, "--resume",
                    *TINY_RUN)
    assert result.exit_code == 2
    assert "cannot resume" in one_line_error(result)
    assert (run / "model.onnx").stat().st_mtime_ns == stat.st_mtime_ns
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_recommend_hub_id_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("recommend", "bert-base-uncased", "--slo", "50ms", "--out", tmp_path / "never")
    assert result.exit_code == 2
    assert result.output == HUB_ERROR
    assert list(tmp_path.iterdir()) == []


def test_recommend_export_options_need_an_exported_source(cnn_path, tmp_path):
    result = invoke("recommend", cnn_path, "--slo", "50ms", "--fp16", "--opset", "18", "--out", tmp_path / "never")
    assert result.exit_code == 2
    assert one_line_error(result) == (f"advisor: error: --opset, --fp16 given, but {cnn_path} is an ONNX file, "
                                      f"measured as it is: export options apply only to a SOURCE that is exported\n")
    assert not (tmp_path / "never").exists()


def test_recommend_export_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cnn.py").write_text(CNN_SOURCE)
    result = invoke("recommend", "tiny_cnn.py:build", "--slo", "50ms", "--out", tmp_path / "runs" / "never")
    assert result.exit_code == 2
    assert "give the shape of each input with --input-shape" in one_line_error(result)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["runs", "tiny_cnn.py"]
