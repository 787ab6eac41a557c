"""What kind of model a SOURCE argument names, decided from the path alone (no torch import, no network)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

from advisor.errors import UserError

ONNX = "onnx"
HUGGINGFACE = "huggingface"
TORCHSCRIPT = "torchscript"
TORCH_EXPORT = "torch.export"
CALLABLE = "callable"
KINDS = (ONNX, HUGGINGFACE, TORCHSCRIPT, TORCH_EXPORT, CALLABLE)

SUFFIX_KINDS = {".onnx": ONNX, ".pt": TORCHSCRIPT, ".pth": TORCHSCRIPT, ".pt2": TORCH_EXPORT}

# `package.module:factory` or `path/to/file.py:factory`; the attribute may be dotted (`module:Class.build`)
_CALLABLE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
# what a Hugging Face hub id looks like: `name` or `org/name`
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?$")

_ACCEPTED = ("an ONNX file, a local Hugging Face model folder (config.json + weights), a TorchScript file (.pt/.pth), "
             "a torch.export file (.pt2) or module:callable returning an nn.Module")


def first_line(error: BaseException) -> str:
    """A one-line summary of an exporter's (often many-page) error message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch.export wraps the real cause under an "Exception summary" heading; prefer that line when present
    for line in lines:
        if line.startswith("<class '"):
            return f"{type(error).__name__}: {line[:300]}"
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def split_callable(source: str) -> tuple[str, str] | None:
    """(`module or file.py`, `attribute path`) for a `module:callable` source, None for anything else."""
    match = _CALLABLE.match(source)
    if not match or re.match(r"^[A-Za-z]:[\\/]", source):  # a Windows drive letter is not a module
        return None
    return match.group("module"), match.group("attr")


def import_callable(source: str):
    """The object a `module:callable` source names; the current directory is importable, like `python -m`."""
    module_part, attribute = split_callable(source)
    if module_part.endswith(".py"):
        file = Path(module_part).expanduser()
        if not file.is_file():
            raise UserError(f"{source}: Python file {module_part} not found")
        name = f"_advisor_source_{file.stem}"
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name while it executes
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            sys.modules.pop(name, None)
            raise UserError(f"{source}: importing {module_part} failed ({first_line(error)})") from None
    else:
        # like `python -m`: the user's own modules next to where they run the advisor are importable, also later
        # when the factory imports helpers lazily, so the directory stays on sys.path
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as error:
            if error.name and module_part.startswith(error.name):
                raise UserError(f"{source}: no module named {module_part!r} (on sys.path or in the current "
                                f"directory)") from None
            raise UserError(f"{source}: importing {module_part} failed ({first_line(error)})") from None
        except Exception as error:
            raise UserError(f"{source}: importing {module_part} failed ({first_line(error)})") from None
    try:
        return functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise UserError(f"{source}: {module_part} has no attribute {attribute!r}") from None


def source_kind(source: str) -> str:
    """Classify SOURCE as one of KINDS, or raise UserError saying what is wrong with it.

    A name that looks like a Hugging Face hub id but is no local folder is refused: the advisor never downloads.
    """
    text = str(source).strip()
    if not text:
        raise UserError(f"empty model source: give {_ACCEPTED}")
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return HUGGINGFACE
        raise UserError(f"{text} is a folder without config.json, so not a Hugging Face model folder; give {_ACCEPTED}")
    if path.is_file():
        kind = SUFFIX_KINDS.get(path.suffix.lower())
        if kind is None:
            raise UserError(f"{text}: unsupported model file type {path.suffix or '(no suffix)'!r}; give {_ACCEPTED}")
        return kind
    if split_callable(text) is not None:
        return CALLABLE
    if path.suffix.lower() in SUFFIX_KINDS:
        raise UserError(f"model file not found: {text}")
    if _HUB_ID.match(text):
        raise UserError(
            f"{text} is not a local path; advisor does not download models: download it first, e.g. "
            f"`huggingface-cli download {text} --local-dir ./{text.rsplit('/', 1)[-1]}`, then pass that folder"
        )
    raise UserError(f"model source not found: {text} (give {_ACCEPTED})")
