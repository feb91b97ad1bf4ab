"""Kernel tiles: layer choice, RGB normalisation, signed slices, grouped/depthwise filters, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

from auditor.errors import AuditorError
from auditor.techniques.kernels import conv_layers, default_kernel_layers, kernel_tiles
from tests.toolkit import assert_unchanged, snapshot


def _net(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


def test_conv_layers_and_defaults(tiny_model):
    assert conv_layers(tiny_model) == ["features.0", "features.3"]
    assert default_kernel_layers(tiny_model) == ["features.0", "features.3"]
    # resnet18: 20 convs; the 3x3 ones after conv1 are 16, the middle (index 8) and the last
    assert default_kernel_layers(tvm.resnet18(weights=None)) == ["conv1", "layer3.0.conv1", "layer4.1.conv2"]
    assert default_kernel_layers(_net(nn.Linear(2, 2))) == []


def test_rgb_tiles_are_min_max_normalised_per_filter_over_all_three_channels():
    conv = nn.Conv2d(3, 2, kernel_size=(1, 2), bias=False)
    with torch.no_grad():
        conv.weight[0] = torch.tensor([[[1.0, 3.0]], [[-1.0, 0.0]], [[2.0, 2.0]]])  # min -1, max 3, span 4
        conv.weight[1] = 0.5  # a constant filter is mid-grey
    tiles = kernel_tiles(_net(conv, nn.Conv2d(2, 2, 1)), "0")
    assert tiles.kind == "rgb" and tiles.limit is None and tiles.in_channels is None
    assert tiles.tiles.shape == (2, 1, 2, 3) and tiles.weight_shape == (2, 3, 1, 2) and tiles.groups == 1
    # pixel (0, j) is (R, G, B) = weight[:, 0, j] mapped by (w + 1) / 4
    expected = np.array([[[0.5, 0.0, 0.75], [1.0, 0.25, 0.75]]], dtype=np.float32)
    np.testing.assert_array_equal(tiles.tiles[0], expected)  # exact: the arithmetic is on small dyadic numbers
    np.testing.assert_array_equal(tiles.tiles[1], np.full((1, 2, 3), 0.5, dtype=np.float32))


def test_signed_tiles_take_the_strongest_slice_and_a_symmetric_limit():
    conv = nn.Conv2d(3, 2, kernel_size=1, bias=False)
    second = nn.Conv2d(2, 2, kernel_size=(1, 2), bias=False)
    with torch.no_grad():
        second.weight[0] = torch.tensor([[[0.1, -0.2]], [[-0.5, 0.3]]])  # channel 1 has the larger norm
        second.weight[1] = torch.tensor([[[0.7, 0.0]], [[0.1, 0.1]]])  # channel 0
    tiles = kernel_tiles(_net(conv, second), "1")
    assert tiles.kind == "signed" and tiles.slice_rule.startswith("per filter, the input channel with the largest")
    np.testing.assert_array_equal(tiles.in_channels, [1, 0])
    np.testing.assert_array_equal(tiles.tiles, np.array([[[-0.5, 0.3]], [[0.7, 0.0]]], dtype=np.float32))
    assert tiles.limit == pytest.approx(0.7)  # the largest |weight| drawn (float32 of 0.7)
    fixed = kernel_tiles(_net(conv, second), "1", in_channel=0)
    np.testing.assert_array_equal(fixed.in_channels, [0, 0])
    np.testing.assert_array_equal(fixed.tiles, np.array([[[0.1, -0.2]], [[0.7, 0.0]]], dtype=np.float32))
    assert fixed.slice_rule == "input channel 0"
    # the first conv with in_channel given is drawn as a signed slice too
    assert kernel_tiles(_net(conv, second), "0", in_channel=2).kind == "signed"


def test_depthwise_and_grouped_slices_name_absolute_input_channels():
    depthwise = nn.Conv2d(4, 8, 3, groups=4, bias=False)  # two filters per input channel
    tiles = kernel_tiles(_net(nn.Conv2d(3, 4, 1), depthwise), "1")
    assert tiles.slice_rule == "depthwise: each channel's own filter" and tiles.groups == 4
    np.testing.assert_array_equal(tiles.in_channels, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(tiles.tiles, depthwise.weight.detach()[:, 0].numpy())
    grouped = nn.Conv2d(4, 2, 1, groups=2, bias=False)  # filter 0 sees channels 0-1, filter 1 sees 2-3
    with torch.no_grad():
        grouped.weight.copy_(torch.tensor([[0.1, -0.9], [0.8, 0.2]]).view(2, 2, 1, 1))
    tiles = kernel_tiles(_net(nn.Conv2d(3, 4, 1), grouped), "1")
    np.testing.assert_array_equal(tiles.in_channels, [1, 2])
    np.testing.assert_array_equal(tiles.tiles.ravel(), np.array([-0.9, 0.8], dtype=np.float32))
    with pytest.raises(AuditorError, match=r"^--kernel-layers: '1' is a grouped convolution \(groups=2\);"):
        kernel_tiles(_net(nn.Conv2d(3, 4, 1), grouped), "1", in_channel=0)


def test_not_a_2d_convolution_and_bad_channel_are_errors():
    model = _net(nn.Conv1d(3, 2, 3), nn.Flatten(), nn.Linear(2, 2), nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1))
    with pytest.raises(AuditorError, match=r"^--kernel-layers: '0' is a Conv1d, not a 2-D convolution;"):
        kernel_tiles(model, "0")
    with pytest.raises(AuditorError, match=r"^--kernel-layers: '2' is a Linear, not a 2-D convolution;"):
        kernel_tiles(model, "2")
    with pytest.raises(AuditorError, match=r"^--kernel-layers: '4' has 2 input channels; choose an input channel "
                                           r"from 0 to 1, not 5$"):
        kernel_tiles(model, "4", in_channel=5)
    with pytest.raises(AuditorError, match=r"^--kernel-layers: mynet has no layer '9'"):
        kernel_tiles(model, "9", model_name="mynet")
    assert conv_layers(model) == ["3", "4"]


def test_tiles_are_copies(tiny_model):
    before = snapshot(tiny_model)
    for name in conv_layers(tiny_model):
        kernel_tiles(tiny_model, name).tiles[...] = 0.0
    assert_unchanged(tiny_model, before)


@pytest.mark.slow
def test_lite0_kernels(lite0_model):
    model = lite0_model.module
    names = default_kernel_layers(model)
    assert names[0] == "_conv_stem" and len(names) == 3
    stem = kernel_tiles(model, names[0])
    assert stem.kind == "rgb" and stem.tiles.shape == (32, 3, 3, 3)
    assert stem.tiles.min() == 0.0 and stem.tiles.max() == 1.0
    last = kernel_tiles(model, names[-1])  # Lite0's last conv with a spatial kernel is a depthwise one
    assert last.slice_rule.startswith("depthwise") and last.limit == pytest.approx(np.abs(last.tiles).max())
