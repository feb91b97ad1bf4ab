"""Leave the user's model exactly as it was given: training flags, requires_grad and device."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def requires_grad_flags(model: nn.Module) -> dict[str, bool]:
    """requires_grad of every parameter, by qualified name."""
    return {name: param.requires_grad for name, param in model.named_parameters()}


@contextmanager
def audit_mode(model: nn.Module, device: torch.device | None = None) -> Iterator[dict[str, bool]]:
    """Put the model in eval mode with frozen parameters (on `device`), and restore all of it after.

    Yields the user's requires_grad flags by parameter name: the report counts trainable parameters
    as the user set them, not as the audit froze them.
    """
    modules = list(model.modules())
    training = [module.training for module in modules]
    named = list(model.named_parameters())
    flags = {name: param.requires_grad for name, param in named}
    original_device = next((t.device for t in itertools.chain((p for _, p in named), model.buffers())), None)
    moved = device is not None and original_device is not None and device != original_device
    try:
        if any(training):  # nested inside another audit_mode (the usual case) it is eval already
            model.eval()
        for _, param in named:
            if param.requires_grad:
                param.requires_grad_(False)
        if moved:
            model.to(device)
        yield flags
    finally:
        if moved:
            model.to(original_device)
        for (_, param), flag in zip(named, flags.values()):
            if param.requires_grad != flag:
                param.requires_grad_(flag)
        for module, flag in zip(modules, training):
            if module.training != flag:  # nn.Module.__setattr__ is slow, and most flags are unchanged
                module.training = flag
