"""The output adapter: a model returning a tuple, a dict or an object with `logits` seen as one returning logits.

`adapt_output` runs one probe forward (eval mode, no gradients, every flag restored after). A model that
returns a tensor is left as it is. Any other model is wrapped in `LogitsAdapter`, an nn.Module whose
forward calls the user's module and returns the logits, and which *shares* the user's parameters, buffers
and child modules (the very dicts, not copies): module names, hooks on layers, `parameters()` and
`state_dict()` keys are exactly the user's, a technique that hooks `layer4` hooks the user's `layer4`, and
the user's module itself is never changed (`unwrap` gives it back).

A binary classifier with one logit z per image (shape N x 1, or N) is seen as two classes [-z, z]
(LoadedModel.binary), so that a sigmoid per column gives P(negative) = sigmoid(-z) = 1 - sigmoid(z) and
P(positive) = sigmoid(z), and a technique explains the negative class with -z (auditor.inputs.models.heads).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.loaded import LoadedModel, first_line

TENSOR = "tensor"
LOGITS_ATTRIBUTE = "logits attribute"
NOT_PROBED = "not probed"


def output_rule(output: Any, batch: int) -> str:
    """How to find the logits (batch x classes) in what a model returned, in the words the record uses.

    Raises TypeError, saying what was returned, when there is no such tensor to take.
    """
    if isinstance(output, torch.Tensor):
        return TENSOR
    if isinstance(getattr(output, "logits", None), torch.Tensor):  # Hugging Face ModelOutput, dataclasses
        return LOGITS_ATTRIBUTE
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), torch.Tensor):
            return 'dict["logits"]'
        keys = [k for k, v in output.items() if _is_logits(v, batch)]
        if len(keys) == 1:
            return f"dict[{keys[0]!r}]".replace("'", '"')
        tensors = (f"several are batch x classes tensors ({', '.join(map(repr, keys))})" if keys else
                   "none is a batch x classes tensor")
        raise TypeError(f"a dict with keys {', '.join(map(repr, output))}: none is 'logits' and {tensors}")
    if isinstance(output, (tuple, list)):
        kind = "list" if isinstance(output, list) else "tuple"
        for index, value in enumerate(output):
            if _is_logits(value, batch):
                return f"{kind}[{index}]"
        shapes = ", ".join(tuple(v.shape).__repr__() if isinstance(v, torch.Tensor) else type(v).__name__
                           for v in output)
        raise TypeError(f"a {kind} of {len(output)} ({shapes}) with no batch x classes tensor")
    raise TypeError(f"{type(output).__name__}, with no `logits`")


def _is_logits(value: Any, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == batch


def apply_rule(output: Any, rule: str) -> Any:
    """The logits by `rule`, with no checks (for torch.fx proxies, which take indexing and attributes)."""
    if rule == LOGITS_ATTRIBUTE:
        return output.logits
    if rule.startswith("dict["):
        return output[rule[6:-2]]
    if rule.startswith(("tuple[", "list[")):
        return output[int(rule[rule.index("[") + 1:-1])]
    return output


def _fits(output: Any, rule: str) -> bool:
    if rule == TENSOR:
        return isinstance(output, torch.Tensor)
    if rule.startswith("dict["):
        return isinstance(output, Mapping)
    if rule.startswith(("tuple[", "list[")):
        return isinstance(output, (tuple, list))
    return True


def logits_of(output: Any, rule: str) -> torch.Tensor:
    """The logits in `output` by `rule` (from output_rule); by output_rule again if the output changed its
    form (a model that returns more in training mode, as Inception's auxiliary outputs)."""
    if _fits(output, rule):
        try:
            logits = apply_rule(output, rule)
        except (AttributeError, KeyError, IndexError, TypeError):
            logits = None
        if isinstance(logits, torch.Tensor):
            return logits
    first = next((v for v in (output if isinstance(output, (tuple, list)) else ()) if isinstance(v, torch.Tensor)
                  and v.ndim), None)
    again = output_rule(output, first.shape[0] if first is not None else -1)
    if again == rule:
        raise TypeError(f"the model's output no longer has its {rule}")
    return apply_rule(output, again)


class LogitsAdapter(nn.Module):
    """The user's module, returning logits: shares its parameters, buffers and children (see the module doc)."""

    def __init__(self, inner: nn.Module, rule: str, binary: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not a child: the names stay the user's
        object.__setattr__(self, "_parameters", inner._parameters)
        object.__setattr__(self, "_buffers", inner._buffers)
        object.__setattr__(self, "_non_persistent_buffers_set", inner._non_persistent_buffers_set)
        object.__setattr__(self, "_modules", inner._modules)
        self.rule = rule
        self.binary = binary

    @property  # type: ignore[override]
    def training(self) -> bool:
        """The user's module's own flag: train(), eval() and a restore of every module's flag (which sees
        this adapter, not the module behind it) set it."""
        inner = self.__dict__.get("inner")
        return inner.training if inner is not None else self.__dict__.get("_training", True)

    @training.setter
    def training(self, mode: bool) -> None:
        inner = self.__dict__.get("inner")
        if inner is None:  # nn.Module.__init__, before the user's module is attached
            self.__dict__["_training"] = mode
        else:
            inner.training = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # one input, as the probe that chose the rule gave it
        if isinstance(x, torch.fx.Proxy):
            # torch.fx traces through the user's forward, whose layers are this module's (shared) children
            logits = apply_rule(self.inner.forward(x), self.rule)
        else:
            logits = logits_of(self.inner(x), self.rule)
        if self.binary:
            z = logits.reshape(-1, 1)
            return torch.cat([-z, z], dim=1)
        return logits

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("inner")
            if inner is None:
                raise
            return getattr(inner, name)  # e.g. a Hugging Face model's `config`, timm's `pretrained_cfg`

    def _get_name(self) -> str:
        return self.inner._get_name()

    def extra_repr(self) -> str:
        return self.inner.extra_repr()

    def __reduce_ex__(self, protocol: int) -> tuple[Any, ...]:
        # copy.deepcopy and pickle rebuild it around a copy of the user's module, sharing as this one does
        return adapter_for, (self.inner, self.rule, self.binary)


_CLASSES: dict[type, type] = {}


def adapter_for(inner: nn.Module, rule: str, binary: bool = False) -> LogitsAdapter:
    """A LogitsAdapter whose class is named like the user's (the architecture table and graph show
    `type(model).__name__` for the whole model: the user's class name, not the adapter's)."""
    cls = _CLASSES.get(type(inner))
    if cls is None:
        name = type(inner).__name__
        cls = _CLASSES[type(inner)] = type(name, (LogitsAdapter,), {"__module__": __name__, "__qualname__": name,
                                                                    "__doc__": LogitsAdapter.__doc__})
    return cls(inner, rule, binary)


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module behind an adapter (the module itself when it is not one)."""
    return module.__dict__["inner"] if isinstance(module, LogitsAdapter) else module


def probe(module: nn.Module, size: tuple[int, int], channels: int, batch: int = 2) -> Any:
    """One forward on a seeded random batch, in eval mode without gradients; the module's flags are restored."""
    from auditor.nn.restore import audit_mode

    reference = next(iter(module.parameters()), None)
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    device = reference.device if reference is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, *size, generator=generator).to(device=device, dtype=dtype)
    with audit_mode(module), torch.no_grad():
        return module(x)


def one_logit(logits: Any, batch: int) -> bool:
    """Whether these logits are one score per image (N x 1, or N): a binary classifier."""
    return isinstance(logits, torch.Tensor) and (tuple(logits.shape) == (batch, 1) or tuple(logits.shape) == (batch,))


def adapt_output(loaded: LoadedModel) -> None:
    """Probe the model's output; wrap it in a LogitsAdapter unless it returns a batch x classes tensor with
    more than one class; record the rule (LoadedModel.output) and whether it is binary."""
    module = loaded.module
    batch = 2
    try:
        output = probe(module, loaded.preprocess.crop_size, loaded.preprocess.channels, batch)
    except Exception as error:  # a model that needs other inputs: the audit's forward will say
        loaded.output = NOT_PROBED
        loaded.notes.append(f"The model's output could not be probed ({first_line(error)}); it is used as it "
                            f"returns.")
        return
    try:
        rule = output_rule(output, batch)
    except TypeError as error:
        raise AuditorError(
            f"--model: {loaded.spec} returns {error}; return the logits tensor (batch x classes), or a tuple, "
            f"dict or object with `logits` holding it, e.g. from a file.py:factory that wraps the model"
        ) from None
    binary = one_logit(logits_of(output, rule), batch)
    if rule != TENSOR:
        loaded.notes.append(f"The model returns {_returns(output)}; the audit takes the logits from its {rule}.")
    wrap(loaded, rule, binary)


def wrap(loaded: LoadedModel, rule: str, binary: bool) -> None:
    """Put the adapter a rule needs around LoadedModel.module (none for a tensor of several classes)."""
    loaded.output = rule
    loaded.binary = binary
    if binary:
        loaded.notes.append("The model returns one logit z per image (a binary classifier): the audit sees it as "
                            "two classes, [-z, z] (negative, positive).")
    if rule != TENSOR or binary:
        loaded.module = adapter_for(unwrap(loaded.module), rule, binary)


def _returns(output: Any) -> str:
    name = type(output).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(output, (tuple, list)):
        return f"{article} {name} of {len(output)}"
    return f"{article} {name}"
