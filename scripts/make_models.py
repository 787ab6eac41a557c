"""Real third-party architectures with random weights, exported to ONNX (no download, deterministic).

    .venv/bin/python scripts/make_models.py --out models/ [--models resnet,bert,mobilenet]

resnet:    transformers ResNetModel (ResNet-18-like: basic blocks [2,2,2,2]), image 1x3x224x224, dynamic batch
mobilenet: transformers MobileNetV2Model, 1x3x224x224, dynamic batch
bert:      transformers BertModel, 4 layers, hidden 256, 4 heads; inputs input_ids, attention_mask,
           token_type_ids with dynamic batch and sequence axes
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class _Hidden:
    """Wraps a transformers model so the ONNX graph has one named output: the last hidden state (or pooled)."""

    @staticmethod
    def wrap(model, field: str):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, *args):
                return getattr(self.inner(*args), field)

        return Wrapped().eval()


def _export(module, args: tuple, names: list[str], dynamic: dict, output: str, path: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), input_names=names, output_names=[output],
                          dynamic_axes={**dynamic, output: {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def resnet(out: Path) -> Path:
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                          layer_type="basic", num_channels=3)
    model = _Hidden.wrap(ResNetModel(config).eval(), "pooler_output")
    return _export(model, (torch.randn(1, 3, 224, 224),), ["pixel_values"], {"pixel_values": {0: "batch"}},
                   "pooled", out / "resnet18.onnx")


def mobilenet(out: Path) -> Path:
    import torch
    from transformers import MobileNetV2Config, MobileNetV2Model

    torch.manual_seed(0)
    model = _Hidden.wrap(MobileNetV2Model(MobileNetV2Config(image_size=224)).eval(), "pooler_output")
    return _export(model, (torch.randn(1, 3, 224, 224),), ["pixel_values"], {"pixel_values": {0: "batch"}},
                   "pooled", out / "mobilenet_v2.onnx")


def bert(out: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512)
    model = _Hidden.wrap(BertModel(config).eval(), "last_hidden_state")
    ids = torch.randint(0, config.vocab_size, (1, 128))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    return _export(model, (ids, torch.ones_like(ids), torch.zeros_like(ids)), names, axes, "last_hidden_state",
                   out / "bert_4l_256h.onnx")


BUILDERS = {"resnet": resnet, "mobilenet": mobilenet, "bert": bert}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="resnet,bert")
    args = parser.parse_args()
    for name in args.models.split(","):
        started = time.perf_counter()
        path = BUILDERS[name.strip()](args.out)
        print(f"{path}  ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
