"""Layer names (the dotted names that `model.get_submodule` accepts), how a layer's output lies on the image
(channels first, channels last, patch tokens), and the default stage layers."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.record_calls import record_calls
from auditor.nn.restore import audit_mode

_MAX_EXTRA_TOKENS = 16  # class, distillation and register tokens ahead of the patch tokens


@dataclass(frozen=True)
class Layout:
    """How a layer's output maps onto the image: which axes are channels and the spatial grid."""

    kind: Literal["channels-first", "channels-last", "tokens"]
    grid: tuple[int, int]
    extra_tokens: int = 0  # leading tokens (class token, registers) dropped before the reshape

    def channels_first(self, tensor: torch.Tensor) -> torch.Tensor:
        """[B, ...] in this layout -> [B, C, h, w]; works on activations and on gradients alike."""
        if self.kind == "channels-first":
            return tensor
        if self.kind == "channels-last":
            return tensor.permute(0, 3, 1, 2)
        patches = tensor[:, self.extra_tokens:]
        return patches.reshape(tensor.shape[0], *self.grid, tensor.shape[-1]).permute(0, 3, 1, 2)

    def describe(self, input_size: tuple[int, int]) -> str:
        """One sentence for the report: how the map was formed from the layer's output."""
        h, w = self.grid
        if self.kind == "channels-first":
            return f"feature maps (N x C x {h} x {w}) used as they are"
        if self.kind == "channels-last":
            return f"channels-last output (N x {h} x {w} x C) permuted to channels first"
        patch = input_size[0] // h
        dropped = {0: "no extra token", 1: "1 leading token (the class token) dropped"}.get(
            self.extra_tokens, f"{self.extra_tokens} leading tokens (class and register tokens) dropped")
        return f"tokens reshaped to a {h} x {w} grid ({patch} px patches), {dropped}"


def _grid_mismatch(h: int, w: int, input_size: tuple[int, int]) -> float:
    """How far (in cells) an h x w grid is from the input's aspect ratio; inf if it is no grid at all."""
    height, width = input_size
    if h * w <= 1 or h > height or w > width:
        return math.inf
    return abs(h * width - w * height) / max(height, width)


def detect_layout(shape: torch.Size | tuple[int, ...], input_size: tuple[int, int]) -> Layout | None:
    """The spatial layout of an [N, ...] output for an input of `input_size`, or None if it has none.

    4-D: channels-first or channels-last, whichever grid fits the input's aspect ratio (ties: first; a
    single trailing channel is no channels-last map, it is a pooled [N, C, 1, 1]).
    3-D: [N, tokens, C]; a few leading tokens are dropped when the rest fill a grid of square patches.
    """
    if len(shape) == 4:
        first = _grid_mismatch(shape[2], shape[3], input_size)
        last = _grid_mismatch(shape[1], shape[2], input_size) if shape[3] > 1 else math.inf  # not [N, C, 1, 1]
        if min(first, last) > 1:
            return None
        return Layout("channels-first", (shape[2], shape[3])) if first <= last else \
            Layout("channels-last", (shape[1], shape[2]))
    if len(shape) == 3:
        return _token_layout(shape[1], input_size)
    return None


def _token_layout(tokens: int, input_size: tuple[int, int]) -> Layout | None:
    """The fewest leading tokens to drop so that the rest tile the input in square patches."""
    height, width = input_size
    for extra in range(min(_MAX_EXTRA_TOKENS, tokens - 1) + 1):
        patches = tokens - extra
        h = round(math.sqrt(patches * height / width))
        if h > 0 and patches % h == 0 and _grid_mismatch(h, patches // h, input_size) <= 1 \
                and height % h == 0 and width % (patches // h) == 0:
            return Layout("tokens", (h, patches // h), extra)
    return None


def channels_first(output: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """A layer's output as [N, C, h, w] when it has a spatial layout (channels-last maps of Swin, ViT tokens),
    else unchanged: what per-channel techniques index on dimension 1."""
    layout = detect_layout(output.shape, input_size)
    return output if layout is None else layout.channels_first(output)


def channel_count(shape: tuple[int, ...], input_size: tuple[int, int]) -> int:
    """The number of channels of an output of `shape` (see channels_first): the last axis for channels-last
    maps and tokens, else the second."""
    layout = detect_layout(shape, input_size)
    return shape[-1] if layout is not None and layout.kind != "channels-first" else shape[1]


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

    The "spine" is the outermost modules that contain a learnt layer (Conv2d or Linear), run once and
    output a spatial map larger than 1x1 (channels first, channels last as in Swin, or ViT tokens; see
    detect_layout): resnet's conv1, layer1..layer4. While it has fewer than three members, its
    containers are opened (vgg's `features`, ViT's `encoder.layers`). Consecutive spine members with the
    same output shape form a stage and its last member is taken (EfficientNet-Lite0: the stem, the seven
    block groups, the head); an isotropic network (ViT: one stage of twelve blocks) also gets the blocks
    one and two thirds of the way along its longest stage. Modules called more than once (shared
    activations) have no single output and are skipped, and so are those that return a tuple or an
    object rather than a tensor (Hugging Face's blocks): their parts are taken instead. Names come in module (definition) order; []
    when no layer qualifies. Runs in eval mode.
    """
    with audit_mode(model):
        calls = record_calls(model, example)
    modules = dict(model.named_modules())
    size = (example.shape[-2], example.shape[-1])
    candidates = [name for name, c in calls.items() if name and len(c.shapes) == 1 and c.tensor
                  and _learns(modules[name]) and detect_layout(c.shapes[0], size) is not None]
    spine = _outermost(candidates, "")
    while 0 < len(spine) < 3:
        opened = [child for name in spine for child in _outermost(candidates, name + ".") or [name]]
        if opened == spine:
            break
        spine = opened
    runs: list[list[str]] = []
    for name in spine:
        if runs and calls[runs[-1][-1]].shapes[0][1:] == calls[name].shapes[0][1:]:
            runs[-1].append(name)
        else:
            runs.append([name])
    stages = {run[-1] for run in runs}
    longest = max(runs, key=len, default=[])
    if len(runs) < 3 and len(longest) >= 3:
        stages |= {longest[len(longest) // 3 - 1], longest[2 * len(longest) // 3 - 1]}
    return [name for name in spine if name in stages]


def _learns(module: nn.Module) -> bool:
    """Whether the module is or contains a 2-D convolution or a linear layer (attention and MLP blocks)."""
    return any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def _outermost(names: list[str], prefix: str) -> list[str]:
    """The names under `prefix` that have no ancestor under `prefix` in `names`, in the given order."""
    inside = [n for n in names if n.startswith(prefix)]
    chosen = set(inside)
    return [n for n in inside if not any(a in chosen for a in _ancestors(n, prefix))]


def _ancestors(name: str, prefix: str) -> list[str]:
    """Dotted-name ancestors of `name` that are longer than `prefix` ("a.b.c" -> "a", "a.b")."""
    parts = name.split(".")
    return [a for a in (".".join(parts[:i]) for i in range(1, len(parts))) if len(a) >= len(prefix)]


def input_channels(module: nn.Module) -> int:
    """The input channels the model takes: its config's num_channels (Hugging Face), else those of the first
    module (in registration order) that is a 2-d convolution or owns a 4-d weight (a TorchScript one), else 3."""
    config = getattr(module, "config", None)
    if isinstance(getattr(config, "num_channels", None), int):
        return config.num_channels
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
        weight = next((p for p in sub.parameters(recurse=False) if p.ndim == 4), None)
        if weight is not None:
            return int(weight.shape[1])
    return 3
