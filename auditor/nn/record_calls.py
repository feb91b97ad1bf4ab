"""record_calls: one forward pass with a hook on every module, recording each call's output shape and MACs.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from auditor.nn.hooks import ForwardHook, forward_hooks


@dataclass
class Calls:
    """What the hooked pass saw of one module: every call's output shape and the MACs summed over calls."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    macs: int = 0
    tensor: bool = True  # every call returned a tensor itself (not one inside a tuple, dict or object)


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
            calls[name].tensor &= isinstance(output, torch.Tensor)
            if tensor is not None:
                calls[name].shapes.append(tuple(tensor.shape))
                calls[name].macs += macs(sub, tensor, inputs)
        return hook

    with forward_hooks([(sub, hook_for(name)) for name, sub in module.named_modules()]), torch.no_grad():
        module(example)
    return calls
