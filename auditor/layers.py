"""Layer names: the dotted names that `model.get_submodule` accepts, as the user sees them."""

from __future__ import annotations

from torch import nn


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
