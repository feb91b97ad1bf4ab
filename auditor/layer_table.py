"""The layer table: one hooked forward pass recording each module's output shape, parameters and MACs.

MACs follow torchinfo's convention so that totals can be checked against it: a convolution's weight
and bias elements are each used once per output position, a linear layer's once per output row, any
other layer's parameters (batch norm, layer norm) once per sample; layers without parameters
(activations, pooling, additions) count zero. Unlike torchinfo, a module that owns parameters and
also has children (e.g. a Conv2d subclass with a padding child) still counts its own MACs, and
nn.MultiheadAttention, which uses its weights through functional calls that no hook sees, counts its
projections and its two attention products (QKᵀ and AV) itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auditor.hooks import ForwardHook, forward_hooks

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_layer(module: nn.Module) -> bool:
    """A module shown whole, as one table row and one graph box at any depth.

    That is a module without children, or a subclass of a torch.nn layer whose children hold no
    parameters (EfficientNet-Lite's Conv2d with a padding child).
    """
    children = list(module.children())
    if not children:
        return True
    if any(True for child in children for _ in child.parameters()):
        return False
    return any(cls.__module__.startswith("torch.nn.modules") and cls not in (nn.Module, *CONTAINERS)
               for cls in type(module).__mro__)


def holds_repeats(module: nn.Module) -> bool:
    """Whether a module keeps a run of one block type in a container child (ViT's Encoder: 12 EncoderBlocks
    in `layers`): such a stage wrapper is opened like a container, so its repeats show as "12 × EncoderBlock".
    """
    for child in module.children():
        if type(child) in CONTAINERS:
            members = list(child.children())
            if len(members) > 1 and len({type(m) for m in members}) == 1 and not is_layer(members[0]):
                return True
    return False


def transparent(module: nn.Module) -> bool:
    """Looked through when counting module levels: containers and stage wrappers (see holds_repeats)."""
    return type(module) in CONTAINERS or holds_repeats(module)


def unit_at_depth(module: nn.Module, name: str, depth: int) -> tuple[str, bool]:
    """The module that module `name` is shown as at `depth` levels (transparent modules not counted):
    its first ancestor (or itself) that is a layer or at level `depth`, and True; else `name`, False
    (a module opened at this depth: only its own parameters fall to it)."""
    path = ""
    level = 0
    for part in name.split(".") if name else ():
        path = f"{path}.{part}" if path else part
        sub = module.get_submodule(path)
        if transparent(sub):
            continue
        level += 1
        if level == depth or is_layer(sub):
            return path, True
    return name, False


@dataclass
class Calls:
    """What the hooked pass saw of one module: every call's output shape and the MACs summed over calls."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    macs: int = 0


@dataclass(frozen=True)
class LayerRow:
    """One row of the layer table: a layer (see is_layer) or another module owning parameters directly."""

    name: str  # qualified name, as model.get_submodule accepts ("" for the model itself)
    type: str
    hyperparameters: str
    output_shape: tuple[int, ...] | None  # of the first call, batch dimension included; None if never called
    calls: int
    parameters: int  # its own, a layer's with its children's; a shared parameter counts at its first owner
    trainable: int
    macs: int  # summed over calls

    @property
    def depth(self) -> int:
        return self.name.count(".") + 1 if self.name else 0

    def as_dict(self, total_parameters: int) -> dict[str, Any]:
        share = self.parameters / total_parameters if total_parameters else 0.0
        return {"name": self.name, "type": self.type, "hyperparameters": self.hyperparameters,
                "output_shape": list(self.output_shape) if self.output_shape is not None else None,
                "calls": self.calls, "parameters": self.parameters, "trainable_parameters": self.trainable,
                "parameter_share": share, "macs": self.macs, "depth": self.depth}


def first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor in a module's output (a tensor, or one nested in a tuple, list or dict)."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    return next((t for t in map(first_tensor, items) if t is not None), None)


def attention_macs(module: nn.MultiheadAttention, output: torch.Tensor, inputs: tuple[Any, ...]) -> int:
    """One call of multi-head attention: the q, k, v and output projections (weights and biases once
    per token, as for a Linear layer) and the QKᵀ and AV products (targets x sources x embedding).

    The output has the query's layout; the key comes from the positional inputs, and without it
    (keyword arguments reach no hook) the call is taken as self-attention.
    """
    batched = output.dim() == 3
    token_axis = 1 if batched and module.batch_first else 0
    batch = output.shape[1 - token_axis] if batched else 1
    key = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], torch.Tensor) else output
    targets, sources = output.shape[token_axis], key.shape[token_axis]
    embed = module.embed_dim
    projections = 2 * targets * (embed * embed + embed) + sources * (embed * (module.kdim + module.vdim) + 2 * embed)
    return batch * (projections + 2 * targets * sources * embed)


def macs(module: nn.Module, output: torch.Tensor, inputs: tuple[Any, ...] = ()) -> int:
    """Multiply-accumulates of one call, from the parameters the module owns directly (see module doc)."""
    if isinstance(module, nn.MultiheadAttention):
        return attention_macs(module, output, inputs)
    owned = sum(p.numel() for p in module.parameters(recurse=False))
    if not owned:
        return 0
    shape = tuple(output.shape)
    if isinstance(module, nn.modules.conv._ConvNd):
        uses = math.prod(shape[:1] + shape[2:])  # batch x output positions
    elif isinstance(module, nn.Linear):
        uses = math.prod(shape[:-1])  # output rows
    else:
        uses = shape[0] if shape else 1  # once per sample
    return owned * uses


def record_calls(module: nn.Module, example: torch.Tensor) -> dict[str, Calls]:
    """Run `module` once on `example` with a hook on every submodule; hooks are gone afterwards."""
    calls = {name: Calls() for name, _ in module.named_modules()}

    def hook_for(name: str) -> ForwardHook:
        def hook(sub: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is not None:
                calls[name].shapes.append(tuple(tensor.shape))
                calls[name].macs += macs(sub, tensor, inputs)
        return hook

    with forward_hooks([(sub, hook_for(name)) for name, sub in module.named_modules()]), torch.no_grad():
        module(example)
    return calls


def layer_rows(module: nn.Module, calls: Mapping[str, Calls],
               requires_grad: Mapping[str, bool] | None = None) -> list[LayerRow]:
    """Rows for layers (see is_layer) and other modules owning parameters, in registration order.

    A layer's row covers its children's parameters and MACs. `requires_grad` maps qualified parameter
    names to their flags as the user set them (the audit freezes parameters while it runs); without
    it the parameters' current flags are used.
    """
    flags = requires_grad or {}
    seen: set[int] = set()
    covered: set[str] = set()  # layers that have a row: their sub-modules get none
    rows = []
    for name, sub in module.named_modules():
        if name.rpartition(".")[0] in covered:
            covered.add(name)
            continue
        layer = is_layer(sub)
        members = list(sub.named_modules(prefix=name)) if layer else [(name, sub)]
        owned = []
        for member_name, member in members:
            for pname, param in member.named_parameters(recurse=False, remove_duplicate=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    owned.append((f"{member_name}.{pname}" if member_name else pname, param))
        if layer or owned:
            record = calls.get(name, Calls())
            rows.append(LayerRow(
                name=name,
                type=type(sub).__name__,
                hyperparameters=hyperparameters(sub),
                output_shape=record.shapes[0] if record.shapes else None,
                calls=len(record.shapes),
                parameters=sum(p.numel() for _, p in owned),
                trainable=sum(p.numel() for n, p in owned if flags.get(n, p.requires_grad)),
                macs=sum(calls[m].macs for m, _ in members if m in calls),
            ))
        if layer:
            covered.add(name)
    return rows


def _dims(value: Any, collapse: bool = False) -> str:
    """3 -> "3", (3, 3) -> "3×3"; with `collapse`, (2, 2) -> "2" (a stride the same along every axis)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if collapse and len(set(values)) == 1:
        values = values[:1]
    return "×".join(str(v) for v in values)


def hyperparameters(module: nn.Module) -> str:
    """The key settings of a layer in a few words: channels or features, kernel, stride, groups, p."""
    parts: list[str] = []
    if hasattr(module, "in_channels") and hasattr(module, "out_channels"):
        parts.append(f"{module.in_channels}→{module.out_channels}")
    elif hasattr(module, "in_features") and hasattr(module, "out_features"):
        parts.append(f"{module.in_features}→{module.out_features}")
    elif isinstance(getattr(module, "num_features", None), int):
        parts.append(f"{module.num_features} features")
    elif hasattr(module, "normalized_shape"):
        parts.append(f"shape {_dims(module.normalized_shape)}")
    if hasattr(module, "kernel_size"):
        parts.append(f"kernel {_dims(module.kernel_size)}")
    for attribute in ("stride", "dilation", "groups"):
        value = getattr(module, attribute, None)
        if value is not None and _dims(value, collapse=True) != "1":
            parts.append(f"{attribute} {_dims(value, collapse=True)}")
    if getattr(module, "output_size", None) is not None:
        parts.append(f"output {_dims(module.output_size)}")
    if isinstance(getattr(module, "p", None), float):
        parts.append(f"p={module.p:g}")
    return ", ".join(parts)


def format_shape(shape: tuple[int, ...] | None) -> str:
    """(1, 64, 56, 56) -> "64×56×56": the batch dimension of the single example is dropped."""
    if shape is None:
        return "not called"
    dims = shape[1:]
    return "×".join(str(d) for d in dims) or "scalar"


def _unique_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            yield tensor


def model_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer, each counted once: the size of the weights in memory."""
    return sum(t.numel() * t.element_size() for t in _unique_tensors(module))
