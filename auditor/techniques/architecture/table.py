"""The layer table: each module's output shape, parameters and MACs, from one hooked forward pass
(auditor.nn.record_calls, whose MAC convention it reports).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auditor.nn.record_calls import Calls

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
