"""resolve_layer (names, modules, one-line errors) and stage_layers (default stage outputs)."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.layers import resolve_layer, stage_layers
from tests.fixtures_models import tiny_swin, tiny_vit
from tests.toolkit import assert_unchanged, snapshot


def test_resolve_layer_by_name_and_by_module(tiny_model):
    module = tiny_model.features[3]
    assert resolve_layer(tiny_model, "features.3") == ("features.3", module)
    assert resolve_layer(tiny_model, module) == ("features.3", module)


def test_resolve_layer_bad_name_is_one_line_with_close_names():
    model = tvm.resnet18(weights=None)
    with pytest.raises(AuditorError) as error:
        resolve_layer(model, "layer9", option="--kernel-layers", model_name="resnet18")
    message = str(error.value)
    assert message == ("--kernel-layers: resnet18 has no layer 'layer9'; close names: layer4, layer3, layer2 "
                       "(`auditor layers` lists them)")


def test_resolve_layer_never_evaluates_the_name(tiny_model):
    with pytest.raises(AuditorError, match=r"^--layer: tinynet has no layer 'features\[0\]'"):
        resolve_layer(tiny_model, "features[0]")
    with pytest.raises(AuditorError, match="no layer ''"):
        resolve_layer(tiny_model, "")  # the model itself is not a layer


def test_resolve_layer_foreign_module(tiny_model):
    with pytest.raises(AuditorError, match=r"^--layer: the Conv2d given is not a module of tinynet;"):
        resolve_layer(tiny_model, nn.Conv2d(3, 3, 1))


STAGES = {
    "resnet50": ["conv1", "layer1", "layer2", "layer3", "layer4"],
    "vgg11": ["features.0", "features.3", "features.8", "features.13", "features.18"],  # last conv per resolution
    "densenet121": ["features.conv0", "features.denseblock1", "features.transition1", "features.denseblock2",
                    "features.transition2", "features.denseblock3", "features.transition3", "features.denseblock4"],
    "mobilenet_v3_small": ["features.0", "features.1", "features.3", "features.6", "features.8", "features.11",
                           "features.12"],  # the last block of each (channels, resolution) group
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_layers_torchvision(name):
    model = getattr(tvm, name)(weights=None)
    model.train()  # a training-mode model: stage_layers must not update batch-norm statistics or the mode
    before = snapshot(model)
    assert stage_layers(model, torch.rand(1, 3, 64, 64)) == STAGES[name]
    assert_unchanged(model, before)


@pytest.mark.slow
def test_stage_layers_lite0_stem_block_groups_head(lite0_model):
    model = lite0_model.module
    before = snapshot(model)
    # Lite0's block groups (channels 16, 24, 40, 80, 112, 192, 320) end at blocks 0, 2, 4, 7, 10, 14, 15
    expected = ["_conv_stem", "_blocks.0", "_blocks.2", "_blocks.4", "_blocks.7", "_blocks.10", "_blocks.14",
                "_blocks.15", "_conv_head"]
    assert stage_layers(model, torch.rand(1, 3, 64, 64)) == expected
    assert_unchanged(model, before)


def test_stage_layers_skips_shared_modules_and_tiny_maps():
    class Shared(nn.Module):
        """conv a -> shared conv b twice -> conv c -> 1x1 conv head: b runs twice, the head is 1x1."""

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.c = nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 2, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.c(self.b(self.b(self.a(x))))).flatten(1)

    assert stage_layers(Shared(), torch.rand(1, 3, 16, 16)) == ["a", "c"]


def test_stage_layers_opens_a_single_container(tiny_model):
    # the whole conv part is `features`: it is opened, and its two convs have different shapes
    assert stage_layers(tiny_model, torch.rand(1, 3, 32, 32)) == ["features.0", "features.3"]
    assert stage_layers(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(1, 3, 2, 2)) == []


def test_stage_layers_of_transformers_read_tokens_and_channels_last_maps():
    # ViT: the patch embedding, then one stage of six same-shape blocks: its thirds and its end
    vit_blocks = [f"encoder.layers.encoder_layer_{i}" for i in (1, 3, 5)]
    assert stage_layers(tiny_vit(), torch.rand(1, 3, 32, 32)) == ["conv_proj", *vit_blocks]
    # Swin: [N, h, w, C] maps; each stage ends where the next patch merging halves the grid
    assert stage_layers(tiny_swin(), torch.rand(1, 3, 32, 32)) == ["features.1", "features.3"]
