"""Real third-party architectures with random weights, exported to ONNX (no download, deterministic).

    .venv/bin/python scripts/make_models.py --out models/ [--models resnet,bert,mobilenet,mlp]

resnet:    transformers ResNetModel (ResNet-18 layout: basic blocks [2,2,2,2], widths 64-512), image 1x3x160x160,
           dynamic batch; outputs last_hidden_state, pooler_output
mobilenet: transformers MobileNetV2Model (default config), image 1x3x224x224, dynamic batch
bert:      transformers BertModel, 4 layers, hidden 256, 4 heads; inputs input_ids, attention_mask, token_type_ids
           with dynamic batch and sequence axes; outputs last_hidden_state, pooler_output
mlp:       torch.nn.Sequential 512-1024-1024-10 with ReLU, input x (batch, 512), dynamic batch

The transformers models are saved with save_pretrained() into OUT/NAME-hf (kept as their PyTorch source) and
exported with advisor.exporting.export_model, the same path `advisor export FOLDER` takes; the MLP goes through the
`file.py:callable` path. Each export is validated and compared with PyTorch; the errors are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from advisor.exporting import ExportOptions, ExportResult, export_model

SEED = 0
RESNET_IMAGE = (1, 3, 160, 160)  # ~0.9 GFLOPs: ONNX Runtime runs it in roughly 15-30 ms on 2 cores
MLP_FEATURES = 512


def _export_pretrained(model, out: Path, name: str, options: ExportOptions) -> ExportResult:
    """save_pretrained into OUT/NAME-hf (kept: the PyTorch source of the ONNX file, for backends that run the
    original framework), then export that folder like a user's downloaded model."""
    folder = out / f"{name}-hf"
    model.save_pretrained(folder)
    return export_model(str(folder), out / f"{name}.onnx", options)


def _report(result: ExportResult) -> Path:
    print(f"  {result.exporter}; {result.error_text()}", file=sys.stderr)
    return result.onnx_path


def resnet(out: Path) -> Path:
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(SEED)
    config = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                          layer_type="basic", num_channels=3)
    options = ExportOptions(input_shapes={"pixel_values": RESNET_IMAGE})
    return _report(_export_pretrained(ResNetModel(config).eval(), out, "resnet18", options))


def mobilenet(out: Path) -> Path:
    import torch
    from transformers import MobileNetV2Config, MobileNetV2Model

    torch.manual_seed(SEED)
    model = MobileNetV2Model(MobileNetV2Config(image_size=224)).eval()
    # transformers' default init (normal, std 0.02) makes activations vanish through 50 layers (outputs ~1e-21),
    # which would make the numerical comparison meaningless; He init per input fan keeps them O(1)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    options = ExportOptions(input_shapes={"pixel_values": (1, 3, 224, 224)})
    return _report(_export_pretrained(model, out, "mobilenet_v2", options))


def bert(out: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    config = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512)
    return _report(_export_pretrained(BertModel(config).eval(), out, "bert_4l_256h", ExportOptions()))


def mlp_module():
    """The MLP, built by a factory so that it is exported through the `file.py:callable` source path."""
    import torch

    torch.manual_seed(SEED)
    return torch.nn.Sequential(
        torch.nn.Linear(MLP_FEATURES, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    ).eval()


def mlp(out: Path) -> Path:
    source = f"{Path(__file__).resolve()}:mlp_module"
    options = ExportOptions(input_shapes={"x": (1, MLP_FEATURES)})
    return _report(export_model(source, out / "mlp.onnx", options))


BUILDERS = {"resnet": resnet, "mobilenet": mobilenet, "bert": bert, "mlp": mlp}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the .onnx files into")
    parser.add_argument("--models", default="resnet,bert,mlp",
                        help=f"comma-separated, from {','.join(BUILDERS)} (default: resnet,bert,mlp)")
    args = parser.parse_args()
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in BUILDERS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(BUILDERS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bars, once per model
    for name in names:
        started = time.perf_counter()
        path = BUILDERS[name](args.out)
        print(f"{path}  ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
