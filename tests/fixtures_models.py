"""Tiny models for tests, importable by spec: `tests.fixtures_models:tiny` or `tests/fixtures_models.py:tiny`.

tiny(): a conv-bn-relu TinyNet; tiny_vit() and tiny_swin(): torchvision's ViT and Swin at sizes that
run in milliseconds. All seeded (the global RNG is left as it was) and in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

TINY_CLASSES = 5
TINY_FACTORY_IMPORT_SPEC = "tests.fixtures_models:tiny"  # the package.module:factory form
TINY_FACTORY_FILE_SPEC = f"{Path(__file__).resolve()}:tiny"  # the path/to/file.py:factory form


class TinyNet(nn.Module):
    """A small conv net (conv-bn-relu x2, pool, linear): fast, with buffers and named layers."""

    def __init__(self, num_classes: int = TINY_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def tiny(num_classes: int = TINY_CLASSES, seed: int = 0) -> nn.Module:
    """A TinyNet with weights fixed by `seed` (the global RNG is left as it was), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyNet(num_classes)
        # non-trivial BatchNorm statistics, so they matter when weights are compared
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_vit(num_layers: int = 6, seed: int = 0) -> nn.Module:
    """A torchvision ViT (ViT-B/16's structure: an Encoder holding `num_layers` EncoderBlocks in `layers`)
    for 32 px inputs: 2 x 2 patches of 16 px and a class token, 8 features, 5 classes. The head is
    re-initialised, not zero as torchvision leaves it, so that the class scores depend on the image."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=num_layers,
                                                     num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=TINY_CLASSES)
        nn.init.normal_(model.heads.head.weight, std=0.5)
    return model.eval()


def tiny_swin(seed: int = 0) -> nn.Module:
    """A two-stage torchvision Swin with channels-last maps: 8 x 8 x 12 then 4 x 4 x 24 at 32 px, 5 classes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=12, depths=[1, 1], num_heads=[1, 2],
                                                   window_size=[2, 2], num_classes=TINY_CLASSES)
    return model.eval()


def not_a_module() -> str:
    """A factory that forgets to return a model."""
    return "not a model"


def broken() -> nn.Module:
    """A factory with a bug in it."""
    raise TypeError("TinyNet() got an unexpected keyword argument 'depth'")
