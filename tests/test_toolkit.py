"""The toolkit's own checks can fail: assert_unchanged catches each kind of change it claims to see."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.fixtures_models import tiny
from tests.toolkit import assert_unchanged, snapshot


def _replace_weight(model: nn.Module) -> None:
    model.classifier.weight = nn.Parameter(model.classifier.weight.detach().clone())  # same values, new object


def _set_grad(model: nn.Module) -> None:
    model.classifier.bias.grad = torch.ones(5)


def _leave_grad_disabled(model: nn.Module) -> None:
    torch.set_grad_enabled(False)


CHANGES: dict[str, tuple[Callable[[nn.Module], object], str]] = {
    "a value": (lambda m: m.features[1].running_mean.add_(1e-6), "features.1.running_mean changed"),
    "a tensor object": (_replace_weight, "classifier.weight was replaced by another tensor"),
    "a training mode": (lambda m: m.features[1].train(), "features.1: training mode False became True"),
    "an inplace flag": (lambda m: setattr(m.features[2], "inplace", True), "features.2: inplace False became True"),
    "a requires_grad flag": (lambda m: m.features[0].weight.requires_grad_(False), "requires_grad changed"),
    "a .grad": (_set_grad, "classifier.bias.grad"),
    "a forward hook": (lambda m: m.pool.register_forward_hook(lambda *a: None), "pool: forward hooks"),
    "a forward pre-hook": (lambda m: m.register_forward_pre_hook(lambda *a: None), "the model: forward pre-hooks"),
    "a backward hook": (lambda m: m.classifier.register_full_backward_hook(lambda *a: None),
                        "classifier: backward hooks"),
    "a backward pre-hook": (lambda m: m.classifier.register_full_backward_pre_hook(lambda *a: None),
                            "classifier: backward pre-hooks"),
    "an attribute": (lambda m: setattr(m.features[0], "forward", m.features[0].forward),
                     "features.0: instance attributes"),
    "a module": (lambda m: m.features.append(nn.Identity()), "modules added, removed or renamed"),
    "a buffer": (lambda m: m.pool.register_buffer("extra", torch.zeros(1)), "parameters or buffers added or removed"),
    "the grad mode": (_leave_grad_disabled, "a global torch mode was left changed"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_assert_unchanged_names_each_kind_of_change(change: str) -> None:
    model = tiny()
    before = snapshot(model)
    assert_unchanged(model, before)  # nothing changed yet
    mutate, message = CHANGES[change]
    with torch.enable_grad():
        mutate(model)
        with pytest.raises(AssertionError, match=message.replace(".", r"\.")):
            assert_unchanged(model, before)


def test_without_values_it_still_sees_a_replaced_tensor_but_not_a_changed_value() -> None:
    model = tiny()
    before = snapshot(model, values=False)
    model.classifier.bias.data.add_(1.0)  # in place: the same object
    assert_unchanged(model, before)
    _replace_weight(model)
    with pytest.raises(AssertionError, match="classifier.weight was replaced"):
        assert_unchanged(model, before)
