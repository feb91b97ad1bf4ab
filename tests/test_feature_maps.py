"""capture: one forward, exact activations, shared modules and non-maps refused, model left as found."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from auditor.errors import AuditorError
from auditor.techniques.feature_maps import capture, strongest_channels
from tests.toolkit import assert_unchanged, snapshot


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return tvm.resnet18(weights=None).eval()


def test_capture_equals_the_model_run_stage_by_stage(resnet18):
    x = torch.randn(2, 3, 64, 64)
    layers = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    maps = capture(resnet18, layers, x)
    with torch.no_grad():
        expected = {}
        h = x
        for name in layers:
            h = getattr(resnet18, name)(h)
            expected[name] = h.clone()  # relu is in place: bn1's own output is the pre-ReLU tensor
    assert list(maps) == layers
    for name in layers:  # exact: the same kernels on the same inputs
        assert torch.equal(maps[name], expected[name]), name
    # bn1 is captured before the in-place ReLU overwrote it
    assert maps["bn1"].min() < 0 and maps["relu"].min() == 0
    assert maps["layer4"].device.type == "cpu" and not maps["layer4"].requires_grad


def test_capture_accepts_modules_and_uses_their_names(resnet18):
    maps = capture(resnet18, [resnet18.layer2], torch.randn(1, 3, 32, 32))
    assert list(maps) == ["layer2"] and maps["layer2"].shape == (1, 128, 4, 4)


def test_shared_modules_and_non_maps_are_refused_and_leave_no_hooks():
    resnet18 = tvm.resnet18(weights=None)
    resnet18.eval().layer3.train()  # a mixed-mode model: capture runs in eval mode and restores this
    resnet18.fc.weight.requires_grad_(False)
    before = snapshot(resnet18)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(AuditorError, match=r"^--feature-layers: 'layer1.0.relu' ran 2 times in one forward pass"):
        capture(resnet18, ["layer1", "layer1.0.relu"], x)
    assert_unchanged(resnet18, before)
    with pytest.raises(AuditorError, match=r"^--feature-layers: 'fc' outputs \(2, 1000\), not a feature map"):
        capture(resnet18, ["fc"], x)
    with pytest.raises(AuditorError, match=r"^--feature-layers: resnet has no layer 'layer5'"):
        capture(resnet18, ["layer5"], x)
    with pytest.raises(AuditorError, match=r"^--feature-layers: resnet18 has no layer .layer5."):
        capture(resnet18, ["layer5"], x, model_name="resnet18")
    capture(resnet18, ["layer3"], x)
    assert_unchanged(resnet18, before)


@pytest.mark.slow
def test_lite0_shared_relu6_is_refused(lite0_model):
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(AuditorError, match=r"'_swish' ran 2 times"):  # the stem's and the head's activation
        capture(lite0_model.module, ["_swish"], x)
    maps = capture(lite0_model.module, ["_blocks.2", "_conv_head"], x)
    assert maps["_blocks.2"].shape == (1, 24, 16, 16) and maps["_conv_head"].shape == (1, 1280, 2, 2)


def test_strongest_channels_by_mean_activation():
    activation = torch.zeros(2, 4, 2, 2)
    activation[0, 1] = 3.0  # mean 3
    activation[0, 2, 0, 0] = 8.0  # mean 2
    activation[0, 3] = -1.0
    activation[1, 3, 1, 1] = 4.0  # mean 1
    activation[1, 0] = 0.5
    top = strongest_channels(activation, 2)
    assert top.indices.tolist() == [[1, 2], [3, 0]]
    assert top.values.tolist() == [[3.0, 2.0], [1.0, 0.5]]
    assert strongest_channels(activation, 10).indices.shape == (2, 4)  # at most C


def test_channels_last_maps_and_tokens_come_back_channels_first():
    from torchvision.ops import Permute

    class Tokens(nn.Module):
        """A 4 x 4 patch grid as ViT tokens: [N, 1 + 16, C] with a class token in front."""

        def forward(self, maps: torch.Tensor) -> torch.Tensor:
            tokens = maps.flatten(2).transpose(1, 2)
            return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 8, stride=8), Permute([0, 2, 3, 1]), Permute([0, 3, 1, 2]), Tokens())
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    maps = capture(model, ["1", "3"], x)
    with torch.no_grad():
        expected = model[0](x)
    assert torch.equal(maps["1"], expected) and torch.equal(maps["3"], expected)  # exact: a pure rearrangement
    assert_unchanged(model, before)
