"""Convolution weights as pictures: which layers to show and the tiles to draw for each.

Only 2-D convolutions (nn.Conv2d and subclasses) have pictures: `kernel_tiles` refuses anything
else (Conv1d/3d, Linear, transposed convolutions) with an AuditorError, and `conv_layers` lists only
nn.Conv2d modules, so defaults never hit that error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.layers import resolve_layer


@dataclass(frozen=True)
class KernelTiles:
    """One conv layer's filters, one tile each, and what a caption needs to say what is drawn.

    kind "rgb": tiles [out, kh, kw, 3] in [0, 1], each filter min-max normalised on its own over its
    three input channels, so colours keep their relation (a constant filter is mid-grey).
    kind "signed": tiles [out, kh, kw], the raw weights of one input-channel slice per filter, to be
    drawn with a diverging colour map from -limit to +limit (limit = the largest |weight| drawn).
    """

    layer: str
    kind: Literal["rgb", "signed"]
    tiles: np.ndarray
    limit: float | None  # the symmetric colour limit for "signed", None for "rgb"
    weight_shape: tuple[int, ...]  # out, in/groups, kh, kw
    groups: int
    in_channels: np.ndarray | None  # for "signed": the input channel drawn for each filter
    slice_rule: str  # how the drawn slice was chosen, in words for a caption


def conv_layers(model: nn.Module) -> list[str]:
    """Dotted names of the model's 2-D convolutions, in module order."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def default_kernel_layers(model: nn.Module) -> list[str]:
    """The first convolution, plus the middle and the last of the later ones with kernels larger than 1x1.

    1x1 kernels would be single pixels, so they are only shown when asked for.
    """
    names = conv_layers(model)
    if not names:
        return []
    modules = dict(model.named_modules())
    spatial = [n for n in names[1:] if modules[n].weight.shape[2] * modules[n].weight.shape[3] > 1]
    later = [spatial[len(spatial) // 2], spatial[-1]] if spatial else []
    return list(dict.fromkeys([names[0], *later]))


def kernel_tiles(model: nn.Module, layer: str | nn.Module, in_channel: int | None = None,
                 option: str = "--kernel-layers", model_name: str | None = None) -> KernelTiles:
    """The tiles for one Conv2d layer (see KernelTiles).

    The model's first convolution on 3 input channels gives RGB tiles. Any other layer gives one
    signed slice per filter: input channel `in_channel` if given, else the slice with the largest L2
    norm, the input that filter weighs most. A depthwise or grouped filter only sees its own group's
    channels, so the slice index is within the group and reported as an absolute input channel.
    `option` and `model_name` name the option and the model in errors (see resolve_layer).
    """
    name, module = resolve_layer(model, layer, option, model_name)
    if not isinstance(module, nn.Conv2d):
        raise AuditorError(f"{option}: {name!r} is a {type(module).__name__}, not a 2-D convolution; "
                           "choose a Conv2d layer (`auditor layers` lists them)")
    weight = module.weight.detach().to("cpu", torch.float32)
    out_channels, per_group = weight.shape[:2]
    common = {"layer": name, "weight_shape": tuple(weight.shape), "groups": module.groups}
    if conv_layers(model)[0] == name and module.in_channels == 3 and module.groups == 1 and in_channel is None:
        return KernelTiles(kind="rgb", tiles=_rgb_tiles(weight), limit=None, in_channels=None,
                           slice_rule="all three input channels as RGB, each filter min-max normalised", **common)
    if in_channel is None:
        within = weight.flatten(2).norm(dim=2).argmax(dim=1)
        rule = "per filter, the input channel with the largest weight norm"
    else:
        within = _fixed_slice(module, in_channel, option, name)
        rule = f"input channel {in_channel}"
    if module.groups == module.in_channels and per_group == 1:
        rule = "depthwise: each channel's own filter"
    group_start = torch.arange(out_channels) // (out_channels // module.groups) * per_group
    tiles = weight[torch.arange(out_channels), within]
    limit = float(tiles.abs().max())
    return KernelTiles(kind="signed", tiles=tiles.numpy(), limit=limit,
                       in_channels=(group_start + within).numpy(), slice_rule=rule, **common)


def _rgb_tiles(weight: torch.Tensor) -> np.ndarray:
    """[out, 3, kh, kw] -> [out, kh, kw, 3] in [0, 1], each filter scaled by its own min and max."""
    flat = weight.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).clamp_min(torch.finfo(weight.dtype).tiny)
    scaled = (weight - low[:, None, None, None]) / span[:, None, None, None]
    scaled[high == low] = 0.5
    return scaled.permute(0, 2, 3, 1).numpy()


def _fixed_slice(module: nn.Conv2d, in_channel: int, option: str, name: str) -> torch.Tensor:
    """The within-group slice index of absolute input channel `in_channel`, for every filter of its group.

    With groups > 1 a filter of another group never sees that channel, so only groups == 1 accepts it.
    """
    if module.groups != 1:
        raise AuditorError(f"{option}: {name!r} is a grouped convolution (groups={module.groups}); "
                           "leave the input channel unset to draw each filter's own slice")
    if not 0 <= in_channel < module.in_channels:
        raise AuditorError(f"{option}: {name!r} has {module.in_channels} input channels; "
                           f"choose an input channel from 0 to {module.in_channels - 1}, not {in_channel}")
    return torch.full((module.out_channels,), in_channel, dtype=torch.long)
