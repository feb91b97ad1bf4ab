"""Feature maps: the activations of chosen layers, captured in one forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.hooks import ForwardHook, forward_hooks
from auditor.nn.layers import detect_layout, resolve_layer
from auditor.nn.restore import audit_mode


class Strongest(NamedTuple):
    """Per image, the n channels with the largest mean activation, strongest first: both [N, n]."""

    values: torch.Tensor
    indices: torch.Tensor


def capture(model: nn.Module, layers: Sequence[str | nn.Module], x: torch.Tensor,
            option: str = "--feature-layers", model_name: str | None = None) -> dict[str, torch.Tensor]:
    """{dotted name: activations [N, C, H, W]} of every layer, from ONE forward pass of `x` in eval mode.

    Activations are detached copies on the CPU (the report renders them there, and the device keeps
    no copy), taken when the layer returns, so a later in-place op (vgg's ReLU(inplace=True)) does not
    change them. A module that runs more than once in one forward pass (EfficientNet-Lite's shared
    ReLU6, the ReLU inside torchvision's Bottleneck) has no single output and is refused, as is an
    output without a spatial layout; the AuditorError names the layer and `option` (and `model_name`
    for an unknown layer, see resolve_layer). Channels-last maps (Swin) and patch tokens (ViT, class
    token dropped) come back rearranged as [N, C, h, w] (see auditor.nn.layers.detect_layout).
    """
    resolved = dict(resolve_layer(model, layer, option, model_name) for layer in layers)
    outputs: dict[str, list[Any]] = {name: [] for name in resolved}

    def keep(name: str) -> ForwardHook:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            copy = output.detach().to("cpu", copy=True) if isinstance(output, torch.Tensor) else output
            outputs[name].append(copy)
        return hook

    with audit_mode(model), forward_hooks([(module, keep(name)) for name, module in resolved.items()]), \
            torch.no_grad():
        model(x)
    size = (x.shape[-2], x.shape[-1])
    return {name: _single_map(name, calls, option, size) for name, calls in outputs.items()}


def _single_map(name: str, calls: list[Any], option: str, input_size: tuple[int, int]) -> torch.Tensor:
    """The one spatial output a layer gave as [N, C, h, w], or the AuditorError that says why there is none."""
    if len(calls) != 1:
        raise AuditorError(f"{option}: {name!r} ran {len(calls)} times in one forward pass (a shared module), "
                           "so it has no single feature map; choose the block or convolution around it")
    output = calls[0]
    layout = detect_layout(output.shape, input_size) if isinstance(output, torch.Tensor) else None
    if layout is None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:  # a 1 x 1 map, say: shown as it is
            return output
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise AuditorError(f"{option}: {name!r} outputs {shape}, not a feature map (N, C, H, W), a channels-last "
                           "map or patch tokens; choose a convolutional or transformer block")
    return layout.channels_first(output)


def strongest_channels(activation: torch.Tensor, n: int) -> Strongest:
    """The `n` channels (at most C) of each image with the largest mean activation over H x W."""
    means = activation.float().mean(dim=(2, 3))
    values, indices = means.topk(min(n, means.shape[1]), dim=1)
    return Strongest(values, indices)
