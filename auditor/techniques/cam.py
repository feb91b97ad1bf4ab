"""CAM, Grad-CAM and Grad-CAM++: where a classifier looks for each image and class.

`cam_maps` computes all three from one forward pass and one batched backward (all K classes of every
image at once, gradients taken only with respect to the target layer's output); the three public
one-method functions are thin views of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.hooks import forward_hooks
from auditor.nn.restore import audit_mode
from auditor.techniques.cam_layers import (
    CamNotApplicable,
    LayerSpec,
    Layout,
    TargetLayer,
    automatic_layer,
    capture_output,
    detect_layout,
    resolve_layer,
)
from auditor.techniques.tensor_ops import minmax

__all__ = ["METHODS", "CamNotApplicable", "CamResult", "cam_maps", "choose_layer", "class_activation_map",
           "grad_cam", "grad_cam_pp"]

Method = Literal["cam", "grad-cam", "grad-cam++"]
Target = Literal["logit", "prob"]
METHODS: tuple[Method, ...] = ("cam", "grad-cam", "grad-cam++")


@dataclass(frozen=True)
class CamResult:
    """Everything a CAM report section needs from one forward pass and one batched backward."""

    layer: TargetLayer  # the layer used, and why
    formed: str  # how the map was formed from the layer's output, in words
    target: Target  # score differentiated: the logit or the softmax probability (CAM always uses weights)
    targets: torch.Tensor  # [N, K] class indices
    logits: torch.Tensor  # [N, classes] from the same forward pass
    raw: dict[str, torch.Tensor]  # method -> [N, K, h, w] at the layer's resolution, before upsampling
    maps: dict[str, torch.Tensor]  # method -> [N, K, H, W] upsampled to the input, min-max normalised
    cam_unavailable: str | None = None  # why classic CAM does not apply, when it does not

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)


@dataclass
class _LinearCall:
    name: str
    module: nn.Linear
    inputs: torch.Tensor
    output: torch.Tensor


@contextmanager
def _last_linear_call(model: nn.Module) -> Iterator[list[_LinearCall]]:
    """Record the last nn.Linear call of the forward pass: the candidate head for classic CAM."""
    calls: list[_LinearCall] = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls[:] = [_LinearCall(name, module, inputs[0].detach(), output.detach())]
        return hook

    linears = [(module, record(name)) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    with forward_hooks(linears):
        yield calls


def cam_maps(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: LayerSpec = None, *,
             target: Target = "logit", methods: Sequence[Method] = METHODS) -> CamResult:
    """CAM, Grad-CAM and Grad-CAM++ maps for `targets` ([N] or [N, K] class indices) of images `x`.

    One forward pass for all images, one batched backward for all K classes, in eval mode; the model
    is left exactly as found. A method CAM cannot serve is left out of `maps`, with the reason in
    `cam_unavailable`.
    """
    if target not in ("logit", "prob"):
        raise AuditorError(f"--cam-target: {target!r} is not a target; use logit or prob")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise AuditorError(f"cam methods: unknown {', '.join(unknown)}; use {', '.join(METHODS)}")
    targets = _as_targets(targets, len(x))
    size = (x.shape[-2], x.shape[-1])
    with audit_mode(model):
        chosen = automatic_layer(model, x) if layer is None else resolve_layer(model, layer)
        with torch.enable_grad(), capture_output(chosen.module) as captured, _last_linear_call(model) as head:
            logits = model(x.detach())
        activation, layout = _checked_activation(chosen, captured.output, size)
        _check_logits(logits, targets)
        targets = targets.to(logits.device)
        features = layout.channels_first(activation.detach())
        raw: dict[str, torch.Tensor] = {}
        cam_unavailable = None
        if "cam" in methods:
            try:
                raw["cam"] = _cam(head[0] if head else None, features, logits.detach(), targets, chosen.name)
            except CamNotApplicable as error:
                cam_unavailable = str(error)
        if {"grad-cam", "grad-cam++"} & set(methods):
            grads = _class_gradients(_scores(logits, targets, target), activation, layout)
            if "grad-cam" in methods:
                raw["grad-cam"] = _weighted_sum(grads.mean(dim=(-2, -1)), features).relu()
            if "grad-cam++" in methods:
                raw["grad-cam++"] = _weighted_sum(_grad_cam_pp_weights(grads, features), features).relu()
    return CamResult(chosen, layout.describe(size), target, targets, logits.detach(), raw,
                     {method: upsample_normalise(r, size) for method, r in raw.items()}, cam_unavailable)


def choose_layer(model: nn.Module, x: torch.Tensor) -> TargetLayer:
    """The automatic target layer for images like `x`; choose once per model, pass its name to each batch."""
    with audit_mode(model):
        return automatic_layer(model, x)


def class_activation_map(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
                         target: Target = "logit") -> torch.Tensor:
    """Classic CAM (Zhou et al. 2016): the head's class weights times the feature maps, [N(,K),H,W].

    Raises CamNotApplicable when the head is not global average pooling + linear. `target` is
    accepted for symmetry; CAM is defined by the head's weights, not by a gradient.
    """
    return _one_method(model, layer, x, targets, target, "cam")


def grad_cam(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
             target: Target = "logit") -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient, ReLU, [N(,K),H,W]."""
    return _one_method(model, layer, x, targets, target, "grad-cam")


def grad_cam_pp(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, *,
                target: Target = "logit") -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018) with the paper's exp(score) closed form, [N(,K),H,W]."""
    return _one_method(model, layer, x, targets, target, "grad-cam++")


def _one_method(model: nn.Module, layer: LayerSpec, x: torch.Tensor, targets: torch.Tensor, target: Target,
                method: Method) -> torch.Tensor:
    result = cam_maps(model, x, targets, layer, target=target, methods=(method,))
    if method not in result.maps:
        raise CamNotApplicable(f"CAM does not apply: {result.cam_unavailable}")
    maps = result.maps[method]
    return maps[:, 0] if torch.as_tensor(targets).ndim == 1 else maps


def _as_targets(targets: torch.Tensor, count: int) -> torch.Tensor:
    """Class indices as a LongTensor [N, K]."""
    targets = torch.as_tensor(targets)
    if targets.dtype not in (torch.int64, torch.int32) or targets.ndim not in (1, 2) or len(targets) != count:
        raise AuditorError(f"cam targets: give class indices as a LongTensor [N] or [N, K] for the {count} "
                           f"images, not {targets.dtype} {tuple(targets.shape)}")
    return (targets[:, None] if targets.ndim == 1 else targets).long()


def _check_logits(logits: Any, targets: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise AuditorError("--model: CAM needs a model that returns class scores (batch x classes), "
                           f"not {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}")
    if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < logits.shape[1]:
        raise AuditorError(f"cam targets: class indices must be in 0..{logits.shape[1] - 1}, "
                           f"got {int(targets.min())}..{int(targets.max())}")


def _checked_activation(layer: TargetLayer, output: torch.Tensor | None,
                        size: tuple[int, int]) -> tuple[torch.Tensor, Layout]:
    """The captured output and its layout, or a user error that says what is wrong with the layer."""
    if output is None:
        raise AuditorError(f"--cam-layer {layer.name}: the layer did not run in the forward pass; choose one that does")
    layout = detect_layout(output.shape, size)
    if layout is None:
        raise AuditorError(f"--cam-layer {layer.name}: its output {tuple(output.shape)} has no spatial grid for a "
                           f"{size[0]} x {size[1]} input; choose a layer with an N x C x H x W, N x H x W x C "
                           "or token output")
    return output, layout


def _scores(logits: torch.Tensor, targets: torch.Tensor, target: Target) -> torch.Tensor:
    """[N, K] differentiable scores: the target logits or their softmax probabilities."""
    return (logits.softmax(dim=1) if target == "prob" else logits).gather(1, targets)


def _class_gradients(scores: torch.Tensor, activation: torch.Tensor, layout: Layout) -> torch.Tensor:
    """d score[n, k] / d activation[n] for every k in one batched backward, as [N, K, C, h, w].

    Images are independent in eval mode, so one cotangent per class column gives every image's
    gradient at once; is_grads_batched vmaps the K columns over a single backward graph.
    """
    count, k = scores.shape
    cotangents = torch.eye(k, dtype=scores.dtype, device=scores.device)[:, None, :].expand(k, count, k)
    (grads,) = torch.autograd.grad(scores, activation, cotangents, is_grads_batched=True,
                                   allow_unused=True, materialize_grads=True)
    grads = layout.channels_first(grads.flatten(0, 1))
    return grads.unflatten(0, (k, count)).transpose(0, 1)


def _weighted_sum(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """sum_c weights[n, k, c] * features[n, c] -> [N, K, h, w]."""
    return torch.einsum("nkc,nchw->nkhw", weights, features)


def _grad_cam_pp_weights(grads: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights, eq. 19 of the paper with Y = exp(S):
    alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), w = sum_ij alpha_ij relu(g_ij). No epsilon: alpha is 0
    where its denominator is (there g = 0 or the position cannot matter)."""
    g2 = grads.square()
    total = features.sum(dim=(-2, -1))[:, None, :, None, None]
    denominator = 2 * g2 + total * g2 * grads
    alpha = torch.where(denominator != 0, g2 / denominator, torch.zeros_like(g2))
    return (alpha * grads.relu()).sum(dim=(-2, -1))


def _cam(head: _LinearCall | None, features: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
         layer: str) -> torch.Tensor:
    """Classic CAM when the scores are a linear layer on the spatial mean of `features`, else the reason."""
    if head is None:
        raise CamNotApplicable("the model has no linear layer to take class weights from")
    pooled = features.mean(dim=(-2, -1))
    if head.inputs.shape != pooled.shape:
        raise CamNotApplicable(f"the head is not global average pooling + one linear layer: the last linear "
                               f"layer {head.name!r} reads {tuple(head.inputs.shape[1:])} features, "
                               f"not the {pooled.shape[1]} channels of {layer!r}")
    if not torch.allclose(head.inputs, pooled, rtol=1e-4, atol=1e-5 * float(pooled.abs().max())):
        raise CamNotApplicable(f"the head is not global average pooling + one linear layer: the last linear "
                               f"layer {head.name!r} does not read the spatial mean of {layer!r}")
    if head.output.shape != logits.shape or not torch.allclose(head.output, logits, rtol=1e-4, atol=1e-5):
        raise CamNotApplicable(f"the class scores are not the output of the last linear layer {head.name!r}")
    return _weighted_sum(head.module.weight.detach()[targets], features)


def upsample_normalise(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, K, h, w] -> [N, K, H, W]: bilinear to the input size, then min-max to [0, 1] per map.
    A constant map (all zero, say) becomes all zero, never NaN."""
    upsampled = F.interpolate(raw.flatten(0, 1)[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return minmax(upsampled).view(*raw.shape[:2], *size)
