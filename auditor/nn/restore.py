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
    training = {module: module.training for module in model.modules()}
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    flags = requires_grad_flags(model)
    original_device = next((t.device for t in itertools.chain(model.parameters(), model.buffers())), None)
    moved = device is not None and original_device is not None and device != original_device
    try:
        model.eval()
        for param in requires_grad:
            param.requires_grad_(False)
        if moved:
            model.to(device)
        yield flags
    finally:
        if moved:
            model.to(original_device)
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)
        for module, flag in training.items():
            module.training = flag

