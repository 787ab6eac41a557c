"""Model export: real torch / transformers models with random weights (built here, never downloaded), exported,
validated and run in ONNX Runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from advisor.errors import MissingDependency, UserError
from advisor.exporting import ExportOptions, ExportResult, export_model, source_kind
from advisor.model import ModelSpec, analyze, load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DYNAMO = "torch.onnx.export(dynamo=True)"
TORCHSCRIPT = "torch.onnx.export(dynamo=False)"
EXPORTERS = (DYNAMO, TORCHSCRIPT, "optimum")
REPO = Path(__file__).resolve().parents[1]

MODULE_SOURCE = '''
import torch

def build():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 3)

    def forward(self, left, right):
        return {"total": self.proj(left) + self.proj(right), "gap": self.proj(left) - self.proj(right)}


def two_heads():
    torch.manual_seed(2)
    return TwoHeads()


two_heads.example_inputs = lambda: {"left": torch.randn(2, 8), "right": torch.randn(2, 8)}
'''


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _dims(values) -> dict[str, list]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("usercode")
    (folder / "tiny_models.py").write_text(MODULE_SOURCE)
    return folder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A BERT encoder built from a config with random weights, saved like a downloaded model folder."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("hf_bert")
    transformers.BertModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory) -> Path:
    """A ResNet image classifier from transformers, tiny widths, random weights."""
    torch.manual_seed(0)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                       num_labels=5)
    folder = tmp_path_factory.mktemp("hf_resnet")
    transformers.ResNetForImageClassification(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder_export(encoder_dir, tmp_path_factory) -> ExportResult:
    return export_model(str(encoder_dir), tmp_path_factory.mktemp("out") / "bert.onnx", ExportOptions())


# ------------------------------------------------------------------------------------------------ source kinds

def test_source_kind_classifies_without_importing_torch(tmp_path, cnn_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "m.pt").write_bytes(b"x")
    (tmp_path / "m.pth").write_bytes(b"x")
    (tmp_path / "m.pt2").write_bytes(b"x")
    script = textwrap.dedent(f"""
        import json, sys
        from advisor.exporting import source_kind
        kinds = [source_kind(s) for s in {[str(cnn_path), str(tmp_path / "hf"), str(tmp_path / "m.pt"),
                                           str(tmp_path / "m.pth"), str(tmp_path / "m.pt2"), "pkg.models:build",
                                           "some/file.py:Net.create"]!r}]
        print(json.dumps({{"kinds": kinds, "heavy": [m for m in ("torch", "transformers", "optimum")
                                                      if m in sys.modules]}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    result = json.loads(done.stdout)
    assert result["kinds"] == ["onnx", "huggingface", "torchscript", "torchscript", "torch.export", "callable",
                               "callable"]
    assert result["heavy"] == []


@pytest.mark.parametrize("hub_id", ["bert-base-uncased", "google/mobilenet_v2_1.0_224"])
def test_hub_id_is_refused_with_a_clear_message(hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as raised:
        export_model(hub_id, tmp_path / "out.onnx", ExportOptions())
    message = str(raised.value)
    assert message.startswith(f"{hub_id} is not a local path; advisor does not download models: download it first")
    assert f"huggingface-cli download {hub_id} --local-dir" in message


def test_bad_sources_are_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="folder without config.json"):
        source_kind(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="unsupported model file type '.txt'"):
        source_kind(str(tmp_path / "notes.txt"))
    with pytest.raises(UserError, match="model file not found"):
        source_kind(str(tmp_path / "missing.onnx"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="has a config.json but no weights"):
        export_model(str(tmp_path / "noweights"), tmp_path / "x.onnx", ExportOptions())


def test_onnx_source_is_validated_in_place(cnn_path, tmp_path):
    result = export_model(str(cnn_path), tmp_path / "unused.onnx", ExportOptions(fp16=True))
    assert (result.onnx_path, result.source_kind, result.max_abs_error) == (cnn_path, "onnx", None)
    assert result.notes == ("--fp16 not applied: the source is already an ONNX file, used as it is",)
    assert not (tmp_path / "unused.onnx").exists()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="not a valid ONNX model"):
        export_model(str(broken), tmp_path / "x.onnx", ExportOptions())


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 3}, "invalid opset 3"),
    ({"task": "translation-but-wrong"}, "unknown task 'translation-but-wrong'"),
    ({"input_shapes": {"x": (1, 0)}}, "invalid input shape for 'x'"),
    ({"input_shapes": {"x": (1 << 20, 1 << 20)}}, "refusing to allocate"),
])
def test_export_options_are_validated(kwargs, message):
    with pytest.raises(UserError, match=message):
        ExportOptions(**kwargs)


def test_export_result_round_trips_through_json():
    result = ExportResult(Path("out/m.onnx"), "pkg:build", "callable", DYNAMO, 1.5e-7, 2e-7, ("a note",))
    assert ExportResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert result.to_dict()["onnx_path"] == "out/m.onnx"


# -------------------------------------------------------------------------------------------- missing packages

def test_missing_torch_names_the_extra(monkeypatch, module_dir, tmp_path):
    monkeypatch.syspath_prepend(str(module_dir))
    monkeypatch.setitem(sys.modules, "torch", None)  # what `import torch` sees when torch is not installed
    with pytest.raises(MissingDependency) as raised:
        export_model("tiny_models:build", tmp_path / "m.onnx", ExportOptions(input_shapes={"x": (1, 16)}))
    assert str(raised.value) == ("exporting a PyTorch model needs torch, which is not installed "
                                 "(pip install 'advisor[export]')")
    assert raised.value.exit_code == 2


def test_missing_transformers_names_the_extra(monkeypatch, encoder_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependency, match=r"a Hugging Face model needs transformers.*advisor\[export\]"):
        export_model(str(encoder_dir), tmp_path / "m.onnx", ExportOptions())


# --------------------------------------------------------------------------------------------- Hugging Face

@pytest.mark.slow
def test_transformers_encoder_export(encoder_dir, encoder_export):
    result = encoder_export
    assert result.source_kind == "huggingface" and result.exporter in EXPORTERS
    assert "task inferred as feature-extraction from BertModel" in result.notes
    # the comparison ran, on all outputs, and found the export faithful
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    assert result.max_rel_error is not None and result.max_rel_error < 1e-4
    model = onnx.load(str(result.onnx_path))
    assert _dims(model.graph.input) == {name: ["batch", "sequence"]
                                        for name in ("input_ids", "attention_mask", "token_type_ids")}
    assert _dims(model.graph.output)["last_hidden_state"] == ["batch", "sequence", 32]
    # the axes really are dynamic: another batch size and sequence length match transformers too
    reference = transformers.BertModel.from_pretrained(encoder_dir).eval()
    ids = np.random.default_rng(3).integers(0, 300, size=(3, 9), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, 6:] = 0
    types = np.zeros_like(ids)
    produced = _session(result.onnx_path).run(["last_hidden_state"], {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                             token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
    assert produced.shape == (3, 9, 32)
    np.testing.assert_allclose(produced, expected, atol=1e-4)


@pytest.mark.slow
def test_exported_encoder_feeds_the_advisor(encoder_export):
    info = analyze(ModelSpec(encoder_export.onnx_path, {"input_ids": (1, 24), "attention_mask": (1, 24),
                                                        "token_type_ids": (1, 24)}))
    assert info.batch_axis
    assert info.flops > 0 and info.vocab_limits["input_ids"] == 300


@pytest.mark.slow
def test_transformers_cnn_export(cnn_dir, tmp_path):
    options = ExportOptions(input_shapes={"pixel_values": (1, 3, 32, 32)})
    result = export_model(str(cnn_dir), tmp_path / "resnet.onnx", options)
    assert result.source_kind == "huggingface" and result.exporter in EXPORTERS
    assert "task inferred as image-classification from ResNetForImageClassification" in result.notes
    assert result.max_abs_error is not None and result.max_rel_error < 1e-4
    model = onnx.load(str(result.onnx_path))
    assert _dims(model.graph.input) == {"pixel_values": ["batch", 3, 32, 32]}
    assert _dims(model.graph.output) == {"logits": ["batch", 5]}
    assert _opset(result.onnx_path) == 17
    # batch 4 in ONNX Runtime equals transformers at batch 4
    images = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    reference = transformers.ResNetForImageClassification.from_pretrained(cnn_dir).eval()
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(images)).logits.numpy()
    np.testing.assert_allclose(_session(result.onnx_path).run(None, {"pixel_values": images})[0], expected,
                               atol=1e-4)
    info = analyze(ModelSpec(result.onnx_path))
    assert info.batch_axis and info.input_shapes == {"pixel_values": (1, 3, 32, 32)}


def test_text_input_shape_must_name_model_inputs(encoder_dir, tmp_path):
    with pytest.raises(UserError, match=r"--input-shape names unknown input\(s\) \['pixel_values'\]"):
        export_model(str(encoder_dir), tmp_path / "m.onnx",
                     ExportOptions(input_shapes={"pixel_values": (1, 3, 8, 8)}))


# ----------------------------------------------------------------------------------------------- PyTorch sources

@pytest.mark.slow
def test_module_callable_from_sys_path(module_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(module_dir))
    result = export_model("tiny_models:build", tmp_path / "mlp.onnx", ExportOptions(input_shapes={"x": (1, 16)}))
    assert (result.source_kind, result.exporter, result.notes) == ("callable", DYNAMO, ())
    assert result.max_abs_error is not None and result.max_abs_error < 1e-5
    model = onnx.load(str(result.onnx_path))
    assert _dims(model.graph.input) == {"x": ["batch", 16]}
    assert _dims(model.graph.output) == {"output": ["batch", 4]}
    assert _opset(result.onnx_path) == 17
    import tiny_models

    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    with torch.no_grad():
        expected = tiny_models.build()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_session(result.onnx_path).run(None, {"x": x})[0], expected, atol=1e-5)


@pytest.mark.slow
def test_module_callable_from_a_file_with_example_inputs(module_dir, tmp_path):
    source = f"{module_dir / 'tiny_models.py'}:two_heads"
    result = export_model(source, tmp_path / "two.onnx", ExportOptions())
    assert result.source_kind == "callable" and result.max_abs_error < 1e-5
    model = onnx.load(str(result.onnx_path))
    assert _dims(model.graph.input) == {"left": ["batch", 8], "right": ["batch", 8]}
    assert _dims(model.graph.output) == {"total": ["batch", 3], "gap": ["batch", 3]}


def test_module_callable_needs_input_shapes(module_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(module_dir))
    with pytest.raises(UserError, match=r"give the shape of each input with --input-shape"):
        export_model("tiny_models:build", tmp_path / "m.onnx", ExportOptions())
    with pytest.raises(UserError, match=r"no module named 'not_there_at_all'"):
        export_model("not_there_at_all:build", tmp_path / "m.onnx", ExportOptions())
    with pytest.raises(UserError, match=r"has no attribute 'nope'"):
        export_model("tiny_models:nope", tmp_path / "m.onnx", ExportOptions())


@pytest.mark.slow
@pytest.mark.parametrize("opset", [14, 18])
def test_opset_option(opset, module_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(module_dir))
    result = export_model("tiny_models:build", tmp_path / "m.onnx",
                          ExportOptions(opset=opset, input_shapes={"x": (2, 16)}))
    assert _opset(result.onnx_path) == opset
    assert result.exporter in (DYNAMO, TORCHSCRIPT) and result.max_abs_error < 1e-5


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_file(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2)).eval()
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 6)), str(tmp_path / "net.pt"))
    result = export_model(str(tmp_path / "net.pt"), tmp_path / "net.onnx", ExportOptions(input_shapes={"x": (1, 6)}))
    assert (result.source_kind, result.exporter) == ("torchscript", TORCHSCRIPT)
    assert result.max_abs_error < 1e-5
    assert _dims(onnx.load(str(result.onnx_path)).graph.input) == {"x": ["batch", 6]}
    with pytest.raises(UserError, match="--input-shape"):
        export_model(str(tmp_path / "net.pt"), tmp_path / "again.onnx", ExportOptions())


@pytest.mark.slow
def test_torch_export_file(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 2)).eval()
    program = torch.export.export(net, (torch.randn(2, 6),), dynamic_shapes=({0: torch.export.Dim("n")},))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    result = export_model(str(tmp_path / "net.pt2"), tmp_path / "net.onnx", ExportOptions(opset=18))
    assert (result.source_kind, result.exporter) == ("torch.export", DYNAMO)
    assert result.max_abs_error < 1e-5
    model = onnx.load(str(result.onnx_path))
    # torch.export's own symbol ("s0", "s31"...) is renamed to the advisor's batch axis
    assert [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", 6]
    assert _dims(model.graph.output) == {"output": ["batch", 2]}


# ------------------------------------------------------------------------- comparison, fp16, external data

@pytest.mark.slow
def test_comparison_measures_real_differences(encoder_export, tmp_path):
    """The recorded error is the measured one: perturb the reference by a known amount and it is reported."""
    from advisor.exporting.finalize import compare
    from advisor.exporting.torch_export import Staged

    model = onnx.load(str(encoder_export.onnx_path))
    names = [value.name for value in model.graph.input]
    rng = np.random.default_rng(0)
    inputs = {name: (rng.integers(0, 300, (2, 5)) if name == "input_ids" else np.ones((2, 5))).astype(np.int64)
              for name in names}
    inputs["token_type_ids"][:] = 0
    produced = _session(encoder_export.onnx_path).run(None, inputs)
    exact = dict(zip([o.name for o in model.graph.output], produced, strict=True))
    staged = Staged(encoder_export.onnx_path, DYNAMO, inputs, exact, {})
    assert max(compare(encoder_export.onnx_path, staged, fp16=False)[:2]) < 1e-6
    shifted = {name: value.copy() for name, value in exact.items()}
    shifted["pooler_output"][1, 3] += 0.25
    max_abs, max_rel, notes = compare(encoder_export.onnx_path, replace(staged, reference=shifted), fp16=False)
    assert max_abs == pytest.approx(0.25, rel=1e-5)
    assert max_rel > 1e-3 and any("differ from the source" in note for note in notes)


@pytest.mark.slow
def test_fp16_and_external_data(encoder_dir, encoder_export, tmp_path):
    output = tmp_path / "bert16.onnx"
    result = export_model(str(encoder_dir), output, ExportOptions(fp16=True, external_data=True))
    assert any("converted to float16" in note for note in result.notes)
    assert any("external data in bert16.onnx.data" in note for note in result.notes)
    assert (tmp_path / "bert16.onnx.data").is_file()
    loaded = load_model(output)  # the advisor's loader accepts it: relative location inside the folder
    initializers = {init.name: init.data_type for init in loaded.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in initializers.values()
    io_types = {v.name: v.type.tensor_type.elem_type for v in list(loaded.graph.input) + list(loaded.graph.output)}
    assert io_types["last_hidden_state"] == onnx.TensorProto.FLOAT  # inputs/outputs stay fp32
    # fp16 rounding shows in the recorded error: bigger than fp32's, still small
    assert encoder_export.max_abs_error < result.max_abs_error < 0.05


def test_external_data_is_automatic_above_the_threshold(module_dir, tmp_path, monkeypatch):
    """Over the threshold (2 GB in real life, lowered here) the weights go to a relative data file by themselves."""
    from advisor.exporting import finalize

    monkeypatch.syspath_prepend(str(module_dir))
    monkeypatch.setattr(finalize, "EXTERNAL_DATA_THRESHOLD_BYTES", 1000)
    output = tmp_path / "deploy" / "mlp.onnx"
    result = export_model("tiny_models:build", output, ExportOptions(input_shapes={"x": (1, 16)}, opset=18))
    data = output.with_name("mlp.onnx.data")
    assert data.is_file() and data.stat().st_size >= 16 * 32 * 4  # tensors under 1 KiB stay inline
    assert data.stat().st_mode & 0o777 == output.stat().st_mode & 0o777
    locations = {entry.value for init in onnx.load(str(output), load_external_data=False).graph.initializer
                 for entry in init.external_data if entry.key == "location"}
    assert locations == {"mlp.onnx.data"}
    assert result.max_abs_error < 1e-5
    # a second export over the first replaces the data file instead of appending to it
    size = data.stat().st_size
    export_model("tiny_models:build", output, ExportOptions(input_shapes={"x": (1, 16)}, opset=18))
    assert data.stat().st_size == size
    load_model(output)


def test_make_models_script_lists_models():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_models.py"), "--help"], capture_output=True,
                          text=True, check=True)
    assert "--models" in done.stdout and "--out" in done.stdout
