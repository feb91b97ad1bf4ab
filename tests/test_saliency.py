"""The saliency engine (auditor.techniques.saliency): the caller chooses the methods, each family is
dispatched on (a new one included), and the fold that keeps the CAM layer out changes no map."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import auditor.techniques.saliency as saliency_module
from auditor.methods import METHODS, Method
from auditor.nn.folding import folded
from auditor.nn.restore import audit_mode
from auditor.techniques import reconstructions
from auditor.techniques.attribution import GradientsUnavailable
from auditor.techniques.reconstructions import (
    NoRectifierWarning,
    guided_backprop,
)
from auditor.techniques.saliency import foldable_but_layer, saliency
from tests.fixtures_models import tiny


def assert_close_to_max(found: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    scale = float(expected.abs().max()) or 1.0
    assert float((found - expected).abs().max()) <= tolerance * scale


def test_a_method_that_is_the_plain_gradient_is_not_scored_under_its_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    found = saliency(model, x, torch.tensor([0, 1]), None, "logit", methods=["guided-backprop", "deconvnet",
                                                                             "gradient"])
    assert set(found.maps) == {"gradient"}
    assert found.missing["guided-backprop"].startswith("guided backprop: no rectifier")
    assert found.missing["deconvnet"].startswith("deconvnet: no rectifier")
    with pytest.warns(NoRectifierWarning):
        guided_backprop(model, x, [0, 1])  # the public function still warns itself


def test_saliency_equals_each_method_on_its_own() -> None:
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 3])
    keys = [key for key, method in METHODS.items() if method.family != "attribution"]
    found = saliency(model, x, targets, "features.5", "logit", methods=keys)
    assert list(found.maps) == [key for key in METHODS if key in found.maps]
    from auditor.techniques.cam import cam_maps

    cams = cam_maps(model, x, targets[:, None], "features.5")
    for key, maps in cams.maps.items():
        torch.testing.assert_close(found.maps[key], maps[:, 0], rtol=0, atol=1e-6)
    for key in ("guided-backprop", "deconvnet", "gradient"):
        expected = reconstructions.gradient_saliency(METHODS[key].compute(model, x, targets))
        assert_close_to_max(found.maps[key], expected)
    product = reconstructions.gradient_saliency(guided_backprop(model, x, targets) * cams.maps["grad-cam"][:, 0, None])
    assert_close_to_max(found.maps["guided-grad-cam"], product)


def test_the_caller_chooses_the_methods(monkeypatch) -> None:
    asked: list[list[str]] = []
    rules: list[list[str]] = []  # the gradient methods of each forward pass: cam_maps' or input_gradients'
    original = saliency_module.cam_maps
    monkeypatch.setattr(saliency_module, "cam_maps", lambda *a, **k: asked.append(list(k["methods"])) or (
        rules.append(list(k["input_gradients"])) if k["input_gradients"] else None) or original(*a, **k))
    gradients = saliency_module.input_gradients
    calls: list[int] = []  # input_gradients calls: only when no CAM method runs
    monkeypatch.setattr(saliency_module, "input_gradients", lambda model, x, targets, methods: calls.append(1) or
                        rules.append(list(methods)) or gradients(model, x, targets, methods))
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    found = saliency(model, x, torch.tensor([0, 1]), "features.5", "logit", methods=["gradient", "grad-cam"])
    assert list(found.maps) == ["grad-cam", "gradient"] and asked == [["grad-cam"]] and rules == [["gradient"]]
    assert len(calls) == 0  # the gradient came from the CAM family's forward pass
    # a product brings in its parts, but only what was asked for is returned
    found = saliency(model, x, torch.tensor([0, 1]), "features.5", "logit", methods=["guided-grad-cam"])
    assert list(found.maps) == ["guided-grad-cam"] and asked[-1] == ["grad-cam"] and rules[-1] == ["guided-backprop"]
    found = saliency(model, x, torch.tensor([0, 1]), "features.5", "logit", methods=["deconvnet"],
                     known={"deconvnet": torch.zeros(2, 32, 32)})
    assert len(asked) == 2 and len(rules) == 2 and torch.equal(found.maps["deconvnet"], torch.zeros(2, 32, 32))
    saliency(model, x, torch.tensor([0, 1]), "features.5", "logit", methods=["guided-backprop", "deconvnet", "gradient"])
    assert rules[-1] == ["guided-backprop", "deconvnet", "gradient"] and len(rules) == 3  # one forward pass for all
    assert len(calls) == 1  # the three rules and no CAM method: input_gradients runs its own pass
    with pytest.raises(ValueError, match="unknown nope"):
        saliency(model, x, torch.tensor([0, 1]), "features.5", "logit", methods=["nope"])


def test_a_new_attribution_family_is_dispatched_as_soon_as_it_is_declared(monkeypatch) -> None:
    seen: list[tuple[int, object, object]] = []

    def fake(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: object, settings: object) -> torch.Tensor:
        seen.append((len(targets), head, settings))
        return torch.full((x.shape[0], *x.shape[-2:]), 0.5)

    def blind(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: object, settings: object) -> torch.Tensor:
        raise GradientsUnavailable("blind: the scores carry no input gradient")

    table = {**METHODS, "fake-attribution": Method("fake-attribution", "Fake", "attribution", fake),
             "blind": Method("blind", "Blind", "attribution", blind)}
    monkeypatch.setattr(saliency_module, "METHODS", table)
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    found = saliency(model, x, torch.tensor([0, 1]), "features.5", "logit",
                     methods=["gradient", "fake-attribution", "blind"], settings={"k": 1})
    assert list(found.maps) == ["gradient", "fake-attribution"]
    assert torch.equal(found.maps["fake-attribution"], torch.full((2, 32, 32), 0.5))
    assert seen == [(2, saliency_module.SOFTMAX, {"k": 1})]
    assert found.missing == {"blind": "blind: the scores carry no input gradient"}
    without = saliency(model, x, torch.tensor([0, 1]), "features.5", "logit", methods=["fake-attribution"])
    assert without.maps == {} and "no attribution settings" in without.missing["fake-attribution"]
    assert len(seen) == 1  # not called without settings


def test_the_fold_keeping_the_cam_layer_changes_no_map() -> None:
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([2, 4])
    for layer in ("features.3", "features.4", "features.5"):  # a conv, its BatchNorm, the ReLU after them
        keys = [key for key, method in METHODS.items() if method.family != "attribution"]
        plain = saliency(model, x, targets, layer, "logit", methods=keys)
        with audit_mode(model), folded(foldable_but_layer(model, layer, x[:1])) as count:
            assert count == (1 if layer in ("features.3", "features.4") else 2)
            found = saliency(model, x, targets, layer, "logit", methods=keys)
        assert list(found.maps) == list(plain.maps)
        for key, maps in plain.maps.items():  # float rounding only (Eigen-CAM's SVD magnifies it most)
            assert_close_to_max(found.maps[key], maps, 1e-4)
    with audit_mode(model), folded(foldable_but_layer(model, None, x[:1])) as count:
        assert count == 0


@pytest.mark.parametrize("name", ["vgg11", "densenet121"])
def test_one_forward_pass_serves_the_cam_and_gradient_families_exactly(name: str) -> None:
    """saliency takes the input gradients from cam_maps' forward pass (cam_maps(input_gradients=...)): the same
    numbers as the two families' own calls, also where ReLUs follow the CAM layer (VGG's classifier: the CAM
    family's batched backward runs through the recorded rectifiers) and where an in-place ReLU reads it
    (DenseNet's relu_ after `features`)."""
    from auditor.techniques.cam import cam_maps

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 5])
    rules = ("guided-backprop", "deconvnet", "gradient")
    shared = cam_maps(model, x, targets[:, None], "features", methods=["grad-cam", "grad-cam++"], input_gradients=rules)
    alone = cam_maps(model, x, targets[:, None], "features", methods=["grad-cam", "grad-cam++"])
    for key in ("grad-cam", "grad-cam++"):
        torch.testing.assert_close(shared.maps[key], alone.maps[key], rtol=0, atol=0)
    for key, gradients in reconstructions.input_gradients(model, x, targets, rules).items():
        torch.testing.assert_close(shared.input_gradients[key][:, 0], gradients, rtol=0, atol=0)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())
