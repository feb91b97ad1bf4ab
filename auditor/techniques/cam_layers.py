"""Target layers for CAM methods: resolve a layer option, read its output as a spatial grid, and choose
one automatically (the last spatial layer, before global pooling, that the class scores depend on).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.nn import layers
from auditor.nn.hooks import forward_hooks
from auditor.nn.layers import Layout, detect_layout

__all__ = ["CamNotApplicable", "Layout", "TargetLayer", "automatic_layer", "capture_output", "detect_layout",
           "resolve_layer"]

LayerSpec = str | nn.Module | None
_RESAMPLING = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
               nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


class CamNotApplicable(AuditorError):
    """The CAM family does not apply to this model (the message says why): no spatial layer that the class
    scores depend on, or, for classic CAM alone, no global-average-pooling + linear head."""


@dataclass(frozen=True)
class TargetLayer:
    """The layer whose activations and gradients form the maps, and why it was used."""

    name: str
    module: nn.Module
    reason: str  # "given" or why the automatic choice picked it


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> TargetLayer:
    """A dotted name or a module of `model` as a TargetLayer (unknown names: a one-line error)."""
    name, module = layers.resolve_layer(model, layer, "--cam-layer")
    return TargetLayer(name, module, "given")


def automatic_layer(model: nn.Module, x: torch.Tensor) -> TargetLayer:
    """The last layer with a spatial output (not an adaptive pooling) whose spatial positions the
    class scores depend on: one probe forward and backward on the first image. The model must be in
    audit mode (eval, frozen parameters).

    Dependence is what rules out a ViT's final patch tokens (only the class token reaches the head).
    Layers inside an attention module (Hugging Face's and timm's query, key and value projections) are
    passed over: they hold queries, keys and values, not the features of each patch, so the choice is the
    block's normalisation before its attention, as for torchvision's ViT.
    A module called several times (EfficientNet-Lite's shared ReLU6) counts by its last call, the one
    the capture hook keeps.
    """
    probe = x[:1].detach().requires_grad_(True)
    calls: list[tuple[str, nn.Module, torch.Tensor]] = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, _inputs: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad and output.shape[0] == 1:
                calls.append((name, module, output))
        return hook

    with torch.enable_grad(), forward_hooks([(m, record(n)) for n, m in model.named_modules() if n]):
        scores = model(probe)
    if not isinstance(scores, torch.Tensor):
        raise AuditorError(f"--model: CAM needs a model that returns a tensor of class scores, "
                           f"not {type(scores).__name__}")
    size = (x.shape[-2], x.shape[-1])
    last_call = {id(module): i for i, (_, module, _) in enumerate(calls)}
    inside_attention = _inside_attention(model)
    candidates = [(name, module, out, layout) for i, (name, module, out) in enumerate(calls)
                  if last_call[id(module)] == i and not isinstance(module, _RESAMPLING) and name not in inside_attention
                  and (layout := detect_layout(out.shape, size)) is not None]
    if not candidates:
        raise CamNotApplicable("--cam-layer: no layer of the model has a spatial output for this input size; "
                               "give the layer with --cam-layer")
    cotangent = torch.randn(scores.shape, generator=torch.Generator().manual_seed(0)).to(scores)
    grads = torch.autograd.grad(scores, [c[2] for c in candidates], cotangent, allow_unused=True)
    for (name, module, _, layout), grad in zip(reversed(candidates), reversed(grads), strict=True):
        if grad is not None and layout.channels_first(grad).abs().amax() > 0:
            h, w = layout.grid
            return TargetLayer(name, module, f"automatic: the last layer with a spatial output ({layout.kind}, "
                                             f"{h} x {w}) that the class scores depend on")
    raise CamNotApplicable("--cam-layer: the class scores depend on no spatial layer (every gradient is zero, as "
                           "with an all-zero head); give the layer with --cam-layer")


def _inside_attention(model: nn.Module) -> set[str]:
    """Names of the modules inside a module whose class name says attention (ViTSelfAttention, Attention...)."""
    found: set[str] = set()
    for name, module in model.named_modules():
        if name and "attention" in type(module).__name__.lower():
            found |= {f"{name}.{child}" for child, _ in module.named_modules() if child}
    return found


@dataclass
class Capture:
    """The target layer's output from the last call, as the rest of the network consumed it."""

    output: torch.Tensor | None = None


@contextmanager
def capture_output(module: nn.Module, keep_graph: bool = False) -> Iterator[Capture]:
    """Capture `module`'s output as a tensor that gradients can be taken with respect to.

    The output is detached (no graph below the layer, so no backward below it) and replaced by a
    clone that requires grad: in-place ops further on (DenseNet's relu_ after `features`) act on the
    clone, so the captured tensor holds the value the next layers read, and its gradient matches.
    With `keep_graph` the clone stays attached to the graph below (input gradients of the same forward
    pass go through it); a backward pass to the clone still stops there.
    """
    captured = Capture()

    def hook(_module: nn.Module, _inputs: tuple[Any, ...], output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise AuditorError(f"--cam-layer: the layer's output is a {type(output).__name__}, not a tensor; "
                               "choose a layer that returns a tensor")
        captured.output = (output if keep_graph else output.detach().requires_grad_(True)).clone()
        return captured.output

    with forward_hooks([(module, hook)]):
        yield captured
