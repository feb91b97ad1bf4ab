"""The output adapter: tuple, list, dict and `.logits` outputs and one-logit models seen as logits, with the
user's module behind it exactly as given."""

from __future__ import annotations

import copy
import pickle
import warnings
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models import LogitsAdapter, load_model, state_dict_sha256, unwrap
from auditor.nn.restore import audit_mode

Pair = namedtuple("Pair", ["scores", "aux"])  # a named tuple without a `logits` field


@dataclass
class Output:
    loss: torch.Tensor | None
    logits: torch.Tensor


class Net(nn.Module):
    """Conv-BN-linear with a root parameter, returning its logits in the form `kind` says."""

    def __init__(self, kind: str = "tensor", classes: int = 3) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("offset", torch.zeros(1))

    def forward(self, x: torch.Tensor):
        features = self.bn(self.conv(x)).mean((2, 3))
        z = self.fc(features) * self.scale + self.offset
        return {
            "tensor": lambda: z,
            "squeezed": lambda: z[:, 0],
            "tuple": lambda: (z, features.mean()),
            "list": lambda: [features.mean(), z],
            "namedtuple": lambda: Pair(z, features),
            "dict": lambda: {"logits": z, "features": features[:, :1].mean()},
            "dict-out": lambda: {"out": z, "loss": features.mean()},
            "object": lambda: Output(None, z),
            "ambiguous": lambda: {"a": z, "b": z},
            "string": lambda: "no logits here",
        }[self.kind]()


def seeded(kind: str, classes: int = 3) -> Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Net(kind, classes).eval()


def x() -> torch.Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("kind", "rule"),
    [("tuple", "tuple[0]"), ("list", "list[1]"), ("namedtuple", "tuple[0]"), ("dict", 'dict["logits"]'),
     ("dict-out", 'dict["out"]'), ("object", "logits attribute")],
)
def test_outputs_are_adapted_to_logits(kind, rule):
    model = seeded(kind)
    reference = seeded("tensor")
    before = state_dict_sha256(model)
    loaded = load_model(model, input_size=16)
    assert loaded.output == rule
    assert isinstance(loaded.module, LogitsAdapter) and loaded.user_module is model and unwrap(loaded.module) is model
    with torch.no_grad():
        assert torch.equal(loaded.module(x()), reference(x()))
    # every technique sees the user's names, parameters and buffers: the very objects
    assert [n for n, _ in loaded.module.named_modules()] == ["", "conv", "bn", "fc"]
    assert list(loaded.module.state_dict()) == list(model.state_dict())
    assert all(a is b for a, b in zip(loaded.module.parameters(), model.parameters()))
    assert loaded.module.bn is model.bn
    assert state_dict_sha256(model) == before == loaded.sha256
    assert any(rule in note for note in loaded.notes)
    assert repr(loaded.module).startswith("Net(") and type(loaded.module).__name__ == "Net"


def test_a_tensor_model_is_not_wrapped():
    model = seeded("tensor")
    loaded = load_model(model)
    assert loaded.module is model and loaded.output == "tensor" and not loaded.binary


@pytest.mark.parametrize("kind", ["tensor", "squeezed", "tuple"])
def test_one_logit_is_binary_as_two_columns(kind):
    model = seeded(kind, classes=1)
    loaded = load_model(model, input_size=16)
    assert loaded.binary
    with torch.no_grad():
        z = seeded("tensor", classes=1)(x())
        assert torch.equal(loaded.module(x()), torch.cat([-z, z], 1))
    assert any("[-z, z]" in note for note in loaded.notes)


@pytest.mark.parametrize(
    ("kind", "match"),
    [("ambiguous", r"a dict with keys 'a', 'b': none is 'logits' and several are batch x classes tensors"),
     ("string", "returns str, with no `logits`")],
)
def test_outputs_with_no_logits_are_one_line(kind, match):
    with pytest.raises(AuditorError, match=match) as error:
        load_model(seeded(kind), input_size=16)
    assert "\n" not in str(error.value)


def test_the_probe_changes_nothing_in_the_users_module():
    model = seeded("tuple").train()
    model.conv.weight.requires_grad_(False)
    stats = model.bn.running_mean.clone()
    loaded = load_model(model, input_size=16)
    assert model.training and model.bn.training  # as given: load_model(module) does not switch modes
    assert torch.equal(model.bn.running_mean, stats) and int(model.bn.num_batches_tracked) == 0
    assert not model.conv.weight.requires_grad and model.fc.weight.requires_grad
    assert loaded.module.training


def test_train_eval_and_a_restore_reach_the_users_own_flag():
    model = seeded("tuple").train()
    adapter = load_model(model, input_size=16).module
    adapter.eval()
    assert not model.training and not model.bn.training
    adapter.train()
    assert model.training and model.bn.training
    with audit_mode(adapter):  # records and restores every module's flag it sees, the adapter's too
        assert not model.training
    assert model.training and model.bn.training


def test_hooks_on_the_adapter_are_hooks_on_the_users_layers():
    model = seeded("dict")
    adapter = load_model(model, input_size=16).module
    seen = []
    handle = dict(adapter.named_modules())["bn"].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        model(x())
    finally:
        handle.remove()
    assert seen == [torch.Size([2, 4, 14, 14])]
    assert not model.bn._forward_hooks


def test_copies_and_moves_keep_the_sharing():
    model = seeded("object")
    adapter = load_model(model, input_size=16).module
    clone = copy.deepcopy(adapter)
    assert clone.inner is not model and clone._modules is clone.inner._modules
    assert clone._parameters is clone.inner._parameters and clone.fc is clone.inner.fc
    with torch.no_grad():
        clone.fc.weight.zero_()
        assert not torch.equal(model.fc.weight, clone.fc.weight)
    adapter.double()
    assert model.fc.weight.dtype == torch.float64 and model.scale.dtype == torch.float64
    with torch.no_grad():
        assert adapter(x().double()).dtype == torch.float64
    again = pickle.loads(pickle.dumps(adapter))
    assert again._modules is again.inner._modules and type(again).__name__ == "Net"


def test_attributes_of_the_users_module_are_reachable():
    model = seeded("dict")
    model.config = {"id2label": {0: "a"}}
    adapter = load_model(model, input_size=16).module
    assert adapter.config is model.config and adapter.kind == "dict"


class Scriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x).mean((2, 3))
        return self.fc(features), features


def test_torchscript_model_returning_a_tuple(tmp_path):
    model = Scriptable().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(tmp_path / "tuple.pt"))
        loaded = load_model(str(tmp_path / "tuple.pt"), input_size=16)
    assert loaded.output == "tuple[0]"
    assert [n for n, _ in loaded.module.named_modules()] == ["", "conv", "fc"]
    assert list(loaded.module.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(loaded.module(x()), model(x())[0], atol=1e-6)


def test_a_model_the_probe_cannot_run_is_left_as_it_is():
    class NeedsTwo(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, image, mask):
            return self.fc(image.mean((2, 3)) * mask)

    model = NeedsTwo()
    loaded = load_model(model)
    assert loaded.module is model and loaded.output == "not probed"
    assert any("could not be probed" in note for note in loaded.notes)


@pytest.mark.parametrize(("kind", "classes"), [("tuple", 3), ("dict", 3), ("object", 3), ("tensor", 1)])
def test_torch_fx_traces_through_the_adapter_to_the_users_layers(kind, classes):
    adapter = load_model(seeded(kind, classes), input_size=16).module
    graph = torch.fx.symbolic_trace(adapter)
    called = [n.target for n in graph.graph.nodes if n.op == "call_module"]
    assert called == ["conv", "bn", "fc"]
    assert {n.target for n in graph.graph.nodes if n.op == "get_attr"} == {"scale", "offset"}
    with torch.no_grad():
        assert torch.equal(graph(x()), adapter(x()))


def test_an_output_that_changes_form_in_training_mode_is_still_adapted():
    """torchvision's Inception returns (logits, aux) in training mode only: the rule found again."""
    model = seeded("dict")
    adapter = load_model(model, input_size=16).module
    model.kind = "tuple"
    assert torch.equal(adapter(x()), seeded("tensor")(x()))
    model.kind = "string"
    with pytest.raises(TypeError, match="with no `logits`"):
        adapter(x())
