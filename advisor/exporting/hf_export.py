"""Local Hugging Face model folders -> ONNX, through optimum's exporter when the installed optimum has one,
otherwise through torch.onnx.export of the transformers model (dynamic batch and sequence axes either way).

optimum 2.x moved its ONNX exporter out into the separate `optimum-onnx` package, whose releases so far pin
transformers < 4.58; with a newer transformers the torch.onnx path is the one that runs, and the result says so.
"""

from __future__ import annotations

from pathlib import Path

from advisor.errors import UserError
from advisor.exporting import deps
from advisor.exporting.torch_export import (
    SEED,
    Staged,
    export_module,
    first_line,
    flat_module,
    named_outputs,
    to_numpy,
)

OPTIMUM = "optimum"

# task -> the transformers Auto class that loads a model for it; the names are optimum's task names
TASKS = {
    "feature-extraction": "AutoModel",
    "fill-mask": "AutoModelForMaskedLM",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "text-generation": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
}
# architecture-name endings -> task, most specific first ("GPT2LMHeadModel" must not match "Model")
_ARCHITECTURE_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForImageClassification", "image-classification"),
    ("Model", "feature-extraction"),
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
DEFAULT_BATCH = 2  # the comparison runs at batch 2 so that batch-mixing bugs would show
DEFAULT_SEQUENCE = 16
DEFAULT_IMAGE_SIZE = 224
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def infer_task(architectures: list[str] | None) -> str:
    """The export task for a config's `architectures`, e.g. BertForSequenceClassification -> text-classification."""
    if not architectures:
        return "feature-extraction"
    name = architectures[0]
    for ending, task in _ARCHITECTURE_TASKS:
        if name.endswith(ending):
            return task
    raise UserError(f"cannot infer the export task of architecture {name}: pass --task, one of {', '.join(TASKS)}")


def _check_weights(folder: Path) -> None:
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{folder} has a config.json but no weights ({' or '.join(WEIGHT_FILES[::2])}); "
                        f"save the model with save_pretrained() or download the whole repository")


def _load(folder: Path, task: str):
    transformers = deps.require("transformers")
    try:
        with deps.quiet():
            model = getattr(transformers, TASKS[task]).from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise UserError(f"transformers cannot load {folder} for task {task}: {first_line(error)}") from None
    # fp32 on CPU whatever the checkpoint was saved in: the export and the comparison are done in fp32
    model = model.float().eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no key/value cache outputs: one graph, one forward pass
    return model


def _parameters(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def dummy_inputs(model, shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], tuple, dict[str, dict[int, str]]]:
    """(input names, seeded tensors, dynamic axes) for a text or vision model, honouring --input-shape."""
    torch = deps.require("torch")
    generator = torch.Generator().manual_seed(SEED)
    parameters = _parameters(model)
    config = model.config
    if "input_ids" in parameters:
        names = ["input_ids"] + [name for name in ("attention_mask", "token_type_ids") if name in parameters]
        if "token_type_ids" in names and not getattr(config, "type_vocab_size", 0):
            names.remove("token_type_ids")  # e.g. GPT-2 takes the argument but has no segment embeddings
        given = {name: tuple(shape) for name, shape in shapes.items() if name in names}
        _refuse_unknown(shapes, names)
        if len(set(given.values())) > 1:
            raise UserError(f"--input-shape gives different shapes to the text inputs: {given}")
        shape = next(iter(given.values()), (DEFAULT_BATCH, DEFAULT_SEQUENCE))
        if len(shape) != 2:
            raise UserError(f"text inputs have shape (batch, sequence); --input-shape gave {shape}")
        limit = getattr(config, "max_position_embeddings", None)
        if limit and shape[1] > limit:
            raise UserError(f"sequence length {shape[1]} exceeds the model's max_position_embeddings ({limit})")
        vocabulary = int(getattr(config, "vocab_size", 0) or 100)
        tensors = {"input_ids": torch.randint(0, vocabulary, shape, generator=generator),
                   "attention_mask": torch.ones(shape, dtype=torch.int64),
                   "token_type_ids": torch.zeros(shape, dtype=torch.int64)}
        return names, tuple(tensors[name] for name in names), {name: {0: "batch", 1: "sequence"} for name in names}
    if "pixel_values" in parameters:
        _refuse_unknown(shapes, ["pixel_values"])
        size = getattr(config, "image_size", DEFAULT_IMAGE_SIZE) or DEFAULT_IMAGE_SIZE
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        shape = tuple(shapes.get("pixel_values", (DEFAULT_BATCH, getattr(config, "num_channels", 3), height, width)))
        if len(shape) != 4:
            raise UserError(f"pixel_values has shape (batch, channels, height, width); --input-shape gave {shape}")
        return (["pixel_values"], (torch.randn(*shape, generator=generator),), {"pixel_values": {0: "batch"}})
    raise UserError(f"{type(model).__name__} takes neither input_ids nor pixel_values; only text and vision models "
                    f"are exported (export it yourself to ONNX, or as a module:callable with example inputs)")


def _refuse_unknown(shapes: dict, names: list[str]) -> None:
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise UserError(f"--input-shape names unknown input(s) {unknown}; the model's inputs are {names}")


def _optimum_export(folder: Path, task: str, staging: Path, opset: int, notes: list[str]) -> Path | None:
    """optimum's exporter when the installed optimum provides one; None (with a note saying why) otherwise."""
    try:
        from optimum.exporters.onnx import main_export
    except Exception:  # ImportError, or an optimum-onnx release that does not import against this transformers
        notes.append("optimum's ONNX exporter is not available in the installed optimum (it lives in the "
                     "optimum-onnx package since optimum 2.0); exported with torch.onnx.export instead")
        return None
    folder_out = staging / OPTIMUM
    try:
        with deps.quiet():
            main_export(str(folder), output=folder_out, task=task, opset=opset, device="cpu", do_validation=False,
                        local_files_only=True, monolith=True, library_name="transformers")
    except Exception as error:
        notes.append(f"optimum's exporter failed ({first_line(error)}); exported with torch.onnx.export instead")
        return None
    path = folder_out / "model.onnx"
    if not path.is_file():
        notes.append("optimum's exporter wrote no model.onnx; exported with torch.onnx.export instead")
        return None
    return path


def export_hf_folder(folder: Path, staging: Path, options) -> Staged:
    """Export a local Hugging Face model folder (config.json + weights) to a staged ONNX file."""
    torch = deps.require("torch")
    transformers = deps.require("transformers")
    torch.manual_seed(SEED)
    folder = Path(folder).expanduser()
    _check_weights(folder)
    notes: list[str] = []
    try:
        with deps.quiet():
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as error:
        raise UserError(f"{folder}/config.json cannot be read by transformers: {first_line(error)}") from None
    task = options.task
    if task is None:
        task = infer_task(getattr(config, "architectures", None))
        notes.append(f"task inferred as {task} from {(config.architectures or ['no architecture'])[0]}")
    model = _load(folder, task)
    names, args, dynamic = dummy_inputs(model, dict(options.input_shapes))
    flat = flat_module(model, names, keyword=True)
    outputs = named_outputs(model, names, args, keyword=True)
    if not outputs:
        raise UserError(f"{type(model).__name__} returned no tensors to export")
    inputs = {name: to_numpy(value) for name, value in zip(names, args)}
    reference = {name: to_numpy(value) for name, value in outputs}
    path = _optimum_export(folder, task, staging, options.opset, notes)
    if path is not None:
        return Staged(path, OPTIMUM, inputs, reference, dynamic, tuple(notes))
    path, exporter, more = export_module(flat, args, names, outputs, dynamic, staging, options.opset)
    return Staged(path, exporter, inputs, reference, dynamic, tuple(notes + more))
