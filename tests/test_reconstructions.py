"""Guided backprop, deconvnet and the plain gradient: hand-computed cases, captum as oracle, functional
ReLUs, TorchScript warning, and the model left exactly as found (no hook survives, even on errors)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from captum.attr import Deconvolution, GuidedBackprop
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.hooks import forward_hooks
from auditor.techniques.reconstructions import (
    RectifierNotSeenWarning,
    deconvnet,
    gradient,
    guided_backprop,
    input_gradients,
)
from tests.fixtures_models import tiny
from tests.toolkit import assert_unchanged, snapshot

METHODS = {"guided": guided_backprop, "deconv": deconvnet, "plain": gradient}


def _hand_model(activation: nn.Module) -> nn.Sequential:
    """conv 2x2 (w = [[1, -1], [2, 0]]) -> activation -> maxpool 2 -> linear (2, -3): 2 classes on 3x3 inputs."""
    conv, fc = nn.Conv2d(1, 1, 2, bias=False), nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]]))
        fc.weight.copy_(torch.tensor([[2.0], [-3.0]]))
    return nn.Sequential(conv, activation, nn.MaxPool2d(2), nn.Flatten(), fc).eval()


X1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
# conv(X1) = [[1, 4], [-2, 2]]: the max 4 at (0, 1); a gradient g there gives g * w at rows 0-1, cols 1-2
W_AT_01 = torch.tensor([[0.0, 1.0, -1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
# conv(-X1) = [[-1, -4], [2, -2]]: after ReLU the max 2 at (1, 0); w at rows 1-2, cols 0-1
W_AT_10 = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0], [2.0, 0.0, 0.0]])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_hand_computed_relu(method):
    x = torch.stack([X1, -X1])[:, None]
    # image 0, class 0: gradient 2 reaches the ReLU at a positive input, so every method gives 2w there.
    # image 1, class 1: gradient -3 at a positive input: plain passes it, guided and deconv clamp it to 0.
    expected = torch.stack([2 * W_AT_01, -3 * W_AT_10 if method == "plain" else torch.zeros(3, 3)])[:, None]
    model = _hand_model(nn.ReLU())
    with torch.inference_mode():  # callers may hold inference mode; gradients are still computed
        result = METHODS[method](model, x, torch.tensor([0, 1]))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)  # small integers: exact up to float rounding


@pytest.mark.parametrize("method", sorted(METHODS))
def test_hand_computed_relu6_is_a_rectifier_with_an_upper_limit(method):
    x = torch.stack([X1, 2 * X1])[:, None]
    # image 0 stays below 6: as with ReLU. image 1: conv = [[2, 8], [-4, 4]], ReLU6 -> [[2, 6], [0, 4]],
    # the max at (0, 1) has input 8 > 6: plain and guided pass nothing there, deconv passes relu(2) = 2.
    second = 2 * W_AT_01 if method == "deconv" else torch.zeros(3, 3)
    expected = torch.stack([2 * W_AT_01, second])[:, None]
    result = METHODS[method](_hand_model(nn.ReLU6(inplace=True)), x, torch.tensor([0, 0]))  # in place
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_hand_computed_layer_channel_stops_the_forward(method):
    model = _hand_model(nn.ReLU())
    calls = []
    with forward_hooks({model[4]: lambda *args: calls.append(1)}):
        result = METHODS[method](model, X1[None, None], torch.tensor([0]), layer="1")
    # channel 0's strongest activation is 4 at (0, 1), seeded with 1: w at rows 0-1, cols 1-2
    torch.testing.assert_close(result, W_AT_01[None, None], rtol=0, atol=1e-6)
    assert calls == []  # the linear layer after the chosen one never ran


def _oracle(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """captum's guided backprop and deconvolution, on its own copy of the model so that anything it
    does to the model cannot affect ours."""
    own = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns that it sets backward hooks on ReLUs
        return {"guided": GuidedBackprop(own).attribute(x, target=targets),
                "deconv": Deconvolution(own).attribute(x, target=targets)}


def _densenet_oracle_model(model: nn.Module) -> nn.Module:
    """torchvision's DenseNet.forward ends with a functional F.relu that captum cannot see; the same
    network with that ReLU as a module is what captum computes guided backprop for correctly."""
    return nn.Sequential(model.features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.classifier)


# mobilenet_v3_small also has Hardswish/Hardsigmoid: neither method treats them as rectifiers, so it matches
# exactly too; a ReLU6 model (mobilenet_v2, Lite0) would differ from captum exactly at its ReLU6s, which
# captum leaves with their plain gradient.
ORACLE_MODELS = [pytest.param("resnet18", marks=pytest.mark.slow), pytest.param("vgg11", marks=pytest.mark.slow),
                 pytest.param("mobilenet_v3_small", marks=pytest.mark.slow),
                 pytest.param("resnet50", marks=pytest.mark.slow), pytest.param("densenet121", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ORACLE_MODELS)
def test_matches_captum(name):
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None).eval()
    oracle_model = _densenet_oracle_model(model) if name == "densenet121" else model
    x, targets = torch.randn(2, 3, 64, 64), torch.tensor([3, 917])
    oracle = _oracle(oracle_model, x, targets)
    plain = gradient(model, x, targets)
    for method, expected in oracle.items():
        result = METHODS[method](model, x, targets)
        scale = float(expected.abs().max())
        assert scale > 0
        # float tolerance: 1e-5 of the largest |gradient| (we measured 0: the same kernels run in the same order)
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-5 * scale)
        assert not torch.allclose(result, plain, rtol=0, atol=1e-3 * scale)


class SmallNet(nn.Module):
    """Five convs with ReLUs, either as nn.ReLU modules or as functional / in-place calls."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 6, 6, 3, padding=1) for i in range(5))
        self.relus = nn.ModuleList(nn.ReLU(inplace=i % 2 == 1) for i in range(5))
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        if self.functional:
            h = F.relu(c[0](x))
            h = c[1](h)
            torch.relu_(h)  # in place, the return value is ignored: the rectified h must be what c[2] sees
            h = c[2](h)
            h.relu_()
            h = F.max_pool2d(F.relu(c[3](h), inplace=True), 2)
            h = torch.relu(c[4](h))
        else:
            h = x
            for conv, relu in zip(c[:3], self.relus[:3]):
                h = relu(conv(h))
            h = self.relus[4](c[4](F.max_pool2d(self.relus[3](c[3](h)), 2)))
        return self.fc(h.mean(dim=(2, 3)))


def test_functional_and_in_place_relus_match_captum_on_the_module_version():
    torch.manual_seed(1)
    modules = SmallNet(functional=False).eval()
    functional = SmallNet(functional=True).eval()
    functional.load_state_dict(modules.state_dict())
    x, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    torch.testing.assert_close(functional(x), modules(x), rtol=0, atol=0)  # the same network
    for method, expected in _oracle(modules, x, targets).items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every rectifier was seen: no warning
            result = METHODS[method](functional, x, targets)
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("method", [guided_backprop, deconvnet])
def test_torchscript_and_rectifier_free_models_warn_and_give_the_plain_gradient(method):
    x, targets = torch.randn(2, 3, 16, 16), torch.tensor([1, 4])
    scripted = torch.jit.script(tiny())
    with pytest.warns(RectifierNotSeenWarning, match="no rectifier .*TorchScript.*plain input gradient"):
        result = method(scripted, x, targets)
    torch.testing.assert_close(result, gradient(scripted, x, targets), rtol=0, atol=0)
    silu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.warns(RectifierNotSeenWarning):
        method(silu, x, torch.tensor([0, 1]))
    partly = nn.Sequential(torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3))), nn.ReLU(),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.warns(RectifierNotSeenWarning, match="part of the model is TorchScript"):
        method(partly, x, torch.tensor([0, 1]))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_left_as_found_also_when_raising(method):
    model = tiny()
    model.features[2].inplace = True
    model.features[1].train()  # a batch norm in training mode: must not update its statistics
    model.classifier.weight.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    x_before = x.clone()
    before = snapshot(model)
    run = METHODS[method]
    with pytest.raises(AuditorError, match=r"^targets: class 7 is out of range; the output has 5 classes \(0 to 4\)$"):
        run(model, x, torch.tensor([0, 7]))
    assert_unchanged(model, before)
    with pytest.raises(AuditorError, match=r"^targets: channel 16 is out of range; the output has 16 channels"):
        run(model, x, torch.tensor([16, 0]), layer="features.3")
    with pytest.raises(AuditorError, match=r"^--layer: tinynet has no layer 'features.9'"):
        run(model, x, torch.tensor([0, 0]), layer="features.9")
    with pytest.raises(AuditorError, match=r"^targets: give one index per image \(2\)"):
        run(model, x, torch.tensor([0]))
    result = run(model, x, torch.tensor([0, 1]), layer=model.features[5])
    assert result.shape == x.shape and not result.requires_grad
    assert_unchanged(model, before)
    assert torch.equal(x, x_before) and not x.requires_grad


@pytest.mark.parametrize("layer", [None, "layer3"])
def test_one_forward_serves_every_method_and_target(layer):
    """input_gradients' methods and [N, K] targets share one forward pass and equal the one-method calls: the
    plain gradient through the recorded masks is autograd's ReLU backward (exact: both multiply by 0 or 1)."""
    model = tvm.resnet18(num_classes=7).eval()
    before = snapshot(model)
    x = torch.randn(2, 3, 48, 48)
    targets = torch.tensor([[3, 5, 0], [1, 1, 6]])
    calls = []
    handle = model.conv1.register_forward_hook(lambda *_: calls.append(1))
    found = input_gradients(model, x, targets, layer=layer)
    handle.remove()
    assert len(calls) == 1 and set(found) == {"guided-backprop", "deconvnet", "gradient"}
    for key, one in (("guided-backprop", guided_backprop), ("deconvnet", deconvnet), ("gradient", gradient)):
        assert found[key].shape == (2, 3, 3, 48, 48)
        for k in range(3):
            torch.testing.assert_close(found[key][:, k], one(model, x, targets[:, k], layer=layer), rtol=0, atol=0)
    assert not torch.equal(found["guided-backprop"], found["gradient"])
    assert_unchanged(model, before)


def test_input_gradients_refuses_unknown_methods():
    with pytest.raises(ValueError, match="guided-backprop, deconvnet, gradient"):
        input_gradients(tiny(), torch.randn(1, 3, 8, 8), torch.tensor([0]), ("smooth",))


@pytest.mark.slow
def test_lite0_shared_relu6_batched(lite0_model):
    model = lite0_model.module
    before = snapshot(model)
    x, targets = torch.randn(2, 3, 64, 64), torch.tensor([281, 967])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every ReLU6 call, shared module or not, was replaced: no warning
        batched = guided_backprop(model, x, targets)
    single = torch.cat([guided_backprop(model, x[i:i + 1], targets[i:i + 1]) for i in range(2)])
    scale = float(batched.abs().max())
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5 * scale)  # batching changes only rounding
    assert (batched - gradient(model, x, targets)).abs().max() > 0.01 * scale
    assert_unchanged(model, before)
