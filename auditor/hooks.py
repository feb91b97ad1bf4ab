"""The only place auditor registers hooks: context managers that always remove them (finally)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]


@contextmanager
def forward_hooks(hooks: Mapping[nn.Module, ForwardHook] | list[tuple[nn.Module, ForwardHook]]) -> Iterator[None]:
    """Register forward hooks for the duration of a `with` block, removed even if the block raises."""
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
