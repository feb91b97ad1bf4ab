"""The only place auditor registers hooks: context managers that always remove them (finally)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

ForwardHook = Callable[[nn.Module, tuple[Any, ...], Any], Any]


ForwardPreHook = Callable[[nn.Module, tuple[Any, ...]], Any]


def has_torchscript(model: nn.Module) -> bool:
    """Whether any part of `model` is TorchScript, which takes no hooks and whose functional calls no mode sees."""
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


@contextmanager
def _registered(pairs: list[tuple[nn.Module, Callable[..., Any]]], method: str) -> Iterator[None]:
    """Each hook registered with `module.<method>` for a `with` block, removed even if the block raises.

    TorchScript modules take no hooks, so they are skipped: their calls are invisible, as the functional
    internals of TorchScript are (a partly scripted model still gets its other modules hooked).
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for module, hook in pairs:
            if not isinstance(module, torch.jit.ScriptModule):
                handles.append(getattr(module, method)(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_hooks(hooks: Mapping[nn.Module, ForwardHook] | list[tuple[nn.Module, ForwardHook]]
                  ) -> AbstractContextManager[None]:
    """Forward hooks (they see a module's output) for the duration of a `with` block."""
    return _registered(list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks), "register_forward_hook")


def forward_pre_hooks(hooks: list[tuple[nn.Module, ForwardPreHook]]) -> AbstractContextManager[None]:
    """Forward pre-hooks (they see a module when its call starts) for the duration of a `with` block."""
    return _registered(list(hooks), "register_forward_pre_hook")


class _StopForward(Exception):
    """Raised by truncated_forward's hook once the target layer has run, to end the forward pass there."""


@contextmanager
def truncated_forward(model: nn.Module, layer: nn.Module) -> Iterator[Callable[[torch.Tensor], Any]]:
    """Yield run(x): the output of `layer`'s first call when `model` runs on x, with nothing after it computed.

    The hook keeps the output and raises a private exception that run() catches, so a technique that
    needs one layer pays only for the network up to it. run() returns None if `layer` never ran.
    """
    captured: list[Any] = []

    def stop(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        captured.append(output)
        raise _StopForward

    def run(x: torch.Tensor) -> Any:
        captured.clear()
        try:
            model(x)
        except _StopForward:
            return captured[0]
        return None

    with forward_hooks([(layer, stop)]):
        yield run

