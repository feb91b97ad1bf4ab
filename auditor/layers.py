"""Layer names: the dotted names that `model.get_submodule` accepts, as the user sees them."""

from __future__ import annotations

import difflib

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.layer_table import record_calls
from auditor.state import audit_mode


def layer_listing(model: nn.Module, depth: int | None = None) -> list[str]:
    """One line per module: indented dotted name, type and parameter count (own and below)."""
    lines = []
    for name, module in model.named_modules():
        level = name.count(".") + 1 if name else 0
        if depth is not None and level > depth:
            continue
        parameters = sum(p.numel() for p in module.parameters())
        label = name or "(model)"
        lines.append(f"{'  ' * level}{label}  {type(module).__name__}  {parameters:,} params")
    return lines


def resolve_layer(model: nn.Module, layer: str | nn.Module, option: str = "--layer",
                  model_name: str | None = None) -> tuple[str, nn.Module]:
    """(dotted name, module) for a name that `get_submodule` accepts or a module of the model.

    Names are looked up, never evaluated; a wrong one is a one-line AuditorError that names `option`
    and the model (`model_name`, else its class) and suggests close names.
    """
    model_name = model_name or type(model).__name__.lower()
    if isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise AuditorError(f"{option}: the {type(layer).__name__} given is not a module of {model_name}; "
                               "pass one of its modules or a dotted name (`auditor layers` lists them)")
        return name, layer
    modules = {n: m for n, m in model.named_modules() if n}  # not get_submodule: TorchScript lacks it
    if layer in modules:
        return layer, modules[layer]
    close = difflib.get_close_matches(layer, list(modules), n=3, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else ""
    raise AuditorError(f"{option}: {model_name} has no layer {layer!r}{hint} (`auditor layers` lists them)")


def stage_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Default layers for feature maps: the output of each stage, found from one forward pass.

    The "spine" is the outermost modules that contain a Conv2d, run once and output a 4-D map larger
    than 1x1 (resnet: conv1, layer1..layer4); while it has fewer than three members, its containers
    are opened (vgg's `features`). Consecutive spine members with the same output shape form a stage
    and its last member is taken (EfficientNet-Lite0: the stem, the seven block groups, the head).
    Modules called more than once (shared activations) have no single output and are skipped.
    Names come in module (definition) order; [] when no convolution qualifies. Runs in eval mode.
    """
    with audit_mode(model):
        calls = record_calls(model, example)
    modules = dict(model.named_modules())
    candidates = [name for name, c in calls.items() if name and len(c.shapes) == 1 and len(c.shapes[0]) == 4
                  and c.shapes[0][2] * c.shapes[0][3] > 1 and _has_conv(modules[name])]
    spine = _outermost(candidates, "")
    while 0 < len(spine) < 3:
        opened = [child for name in spine for child in _outermost(candidates, name + ".") or [name]]
        if opened == spine:
            break
        spine = opened
    return [name for name, after in zip(spine, [*spine[1:], None])
            if after is None or calls[after].shapes[0][1:] != calls[name].shapes[0][1:]]


def _has_conv(module: nn.Module) -> bool:
    """Whether the module is or contains a 2-D convolution."""
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _outermost(names: list[str], prefix: str) -> list[str]:
    """The names under `prefix` that have no ancestor under `prefix` in `names`, in the given order."""
    inside = [n for n in names if n.startswith(prefix)]
    chosen = set(inside)
    return [n for n in inside if not any(a in chosen for a in _ancestors(n, prefix))]


def _ancestors(name: str, prefix: str) -> list[str]:
    """Dotted-name ancestors of `name` that are longer than `prefix` ("a.b.c" -> "a", "a.b")."""
    parts = name.split(".")
    return [a for a in (".".join(parts[:i]) for i in range(1, len(parts))) if len(a) >= len(prefix)]
