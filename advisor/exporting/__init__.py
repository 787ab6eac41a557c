"""Export a model to ONNX: a Hugging Face model folder, a TorchScript or torch.export file, or a `module:callable`
returning an nn.Module. The result is validated (checker, ONNX Runtime) and compared with the source framework.

Importing this package does not import torch, transformers or optimum; they are imported when an export runs, and a
missing one is a MissingDependency naming the `export` extra.
"""

from advisor.exporting.api import ExportOptions, ExportResult, export_model, source_kind

__all__ = ["ExportOptions", "ExportResult", "export_model", "source_kind"]
