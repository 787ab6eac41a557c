"""What kind of model a SOURCE argument names, decided from the path alone (no torch import, no network)."""

from __future__ import annotations

import re
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


def split_callable(source: str) -> tuple[str, str] | None:
    """(`module or file.py`, `attribute path`) for a `module:callable` source, None for anything else."""
    match = _CALLABLE.match(source)
    if not match or re.match(r"^[A-Za-z]:[\\/]", source):  # a Windows drive letter is not a module
        return None
    return match.group("module"), match.group("attr")


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
