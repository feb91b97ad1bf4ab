"""The one table of saliency methods: each declared once, with its key, name, family, function and reuses.

The CAM section, the trust section, the reconstructions section and report.json read it: `cam_maps`
computes every method of the "cam" family, the trust section scores every method in the table's order
(the order of its rows, legends and report.json), and a "product" is made of the methods it reuses.
Adding a method is one function (in auditor.techniques) and one entry here.

Families, and what `compute` is for each:
- "cam": `compute(inputs: CamInputs) -> [N, K, h, w]`, the raw map at the target layer, made from the
  one forward pass and (at most) one batched backward that `cam_maps` shares among the family (CAM,
  Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM, XGrad-CAM, HiResCAM, Eigen-CAM; Score-CAM adds forward
  passes of masked inputs); it is upsampled to the input and min-max normalised to [0, 1]. May raise
  CamNotApplicable (classic CAM).
- "gradient": `compute(model, x, targets [N], layer=None) -> [N, 3, H, W]`, an input gradient, drawn as
  a picture and scored as `gradient_saliency` (largest |gradient| over colour channels, in [0, 1]).
  A result that is the plain gradient (NoRectifierWarning) is not shown or scored under its name.
- "product": `compute(*results of reuses, in order) -> [N, 3, H, W]`, an input-gradient-like product of
  other methods' results (a gradient method's gradients, a CAM method's [N, H, W] maps of the same
  images and classes); scored as `gradient_saliency`. Missing when any method it reuses is.
- "attribution": `compute(model, x, targets [N], head, settings) -> [N, H, W]` in [0, 1], a pixel
  attribution of auditor.techniques.attribution with the settings of `attribution_settings` (steps,
  samples, window, masks, seed: the attribution section's, which the trust section reuses for the
  randomised models). Integrated Gradients and SmoothGrad raise GradientsUnavailable on a model whose
  input gradient cannot be used; occlusion and RISE only run the model forward.

`many_passes` marks the methods that take tens to thousands of model passes per map (Score-CAM: one per
channel): the trust section runs them at fewer randomisation steps (--trust-costly-steps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from auditor.inputs.models.heads import Head
from auditor.techniques.attribution import integrated_gradients, occlusion, rise, smooth_grad
from auditor.techniques.cam import (
    cam_raw,
    eigen_cam_raw,
    grad_cam_pp_raw,
    grad_cam_raw,
    guided_grad_cam_product,
    hires_cam_raw,
    layer_cam_raw,
    score_cam_raw,
    xgrad_cam_raw,
)
from auditor.techniques.reconstructions import deconvnet, gradient, guided_backprop

Family = Literal["cam", "gradient", "product", "attribution"]


@dataclass(frozen=True)
class Method:
    """One saliency method."""

    key: str  # report.json, ctx.shared and CLI key: "grad-cam"
    name: str  # display name in tables, legends and figure rows: "Grad-CAM"
    family: Family  # how it is computed, and what `compute` takes (see the module doc)
    compute: Callable[..., torch.Tensor]
    reuses: tuple[str, ...] = ()  # "product": the keys of the methods whose results `compute` takes, in order
    phrase: str = ""  # the name mid-sentence in captions and notes ("guided backprop"); `name` when empty
    many_passes: bool = False  # tens to thousands of model passes per map (see the module doc)

    @property
    def words(self) -> str:
        """How a caption names it mid-sentence."""
        return self.phrase or self.name


def _table(*methods: Method) -> dict[str, Method]:
    """Key -> method, in the order given; a clash, or a product that reuses anything but CAM and gradient
    methods declared before it, fails at import."""
    table: dict[str, Method] = {}
    for method in methods:
        if method.key in table:
            raise ValueError(f"saliency methods: {method.key!r} is declared twice")
        parts = [table[key].family if key in table else "undeclared" for key in method.reuses]
        if (method.family == "product") != bool(parts) or not set(parts) <= {"cam", "gradient"}:
            raise ValueError(f"saliency methods: {method.key!r} reuses {method.reuses!r}; a product, and only "
                             "a product, reuses CAM or gradient methods declared before it")
        table[method.key] = method
    return table


def attribution_settings(settings: Mapping[str, Any], batch_size: int, seed: int,
                         size: tuple[int, int]) -> dict[str, Any]:
    """What the attribution adapters read: the attribution technique's options (its declared names), with the
    automatic occlusion window (a quarter of the shorter side) and stride (half the window) resolved for
    inputs of `size` (a window given larger than the input is the whole input, a stride larger than the
    window the window), the batch size and the seed."""
    window = min(settings["occlusion_window"] or max(1, min(size) // 4), min(size))  # at most the input's side
    return {"ig_steps": settings["ig_steps"], "smoothgrad_samples": settings["smoothgrad_samples"],
            "smoothgrad_noise": settings["smoothgrad_noise"], "occlusion_window": window,
            "occlusion_stride": min(settings["occlusion_stride"] or max(1, window // 2), window),
            "rise_masks": settings["rise_masks"], "rise_cell": settings["rise_cell"], "batch_size": batch_size,
            "seed": seed, "input_size": list(size)}


def passes(key: str, settings: Mapping[str, Any]) -> int:
    """Model passes per image of attribution method `key` under `settings` (forward and backward for the
    gradient methods, forward only for occlusion and RISE)."""
    if key == "integrated-gradients":
        return settings["ig_steps"]
    if key in ("smoothgrad", "smoothgrad-squared"):
        return settings["smoothgrad_samples"]
    if key == "occlusion":
        window, stride = settings["occlusion_window"], settings["occlusion_stride"]
        height, width = settings["input_size"]
        # captum's placement (auditor.techniques.attribution.occlusion): the last window may stick out, cut off
        return (-(-(height - window) // stride) + 1) * (-(-(width - window) // stride) + 1) + 1
    if key == "rise":
        return settings["rise_masks"]
    raise KeyError(key)


def _integrated_gradients(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: Head,
                          settings: Mapping[str, Any]) -> torch.Tensor:
    return integrated_gradients(model, x, targets, steps=settings["ig_steps"], batch_size=settings["batch_size"],
                                head=head)


def _smooth_grad(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: Head,
                 settings: Mapping[str, Any], squared: bool = False) -> torch.Tensor:
    return smooth_grad(model, x, targets, samples=settings["smoothgrad_samples"], noise=settings["smoothgrad_noise"],
                       seed=settings["seed"], squared=squared, batch_size=settings["batch_size"], head=head)


def _smooth_grad_squared(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: Head,
                         settings: Mapping[str, Any]) -> torch.Tensor:
    return _smooth_grad(model, x, targets, head, settings, squared=True)


def _occlusion(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: Head,
               settings: Mapping[str, Any]) -> torch.Tensor:
    return occlusion(model, x, targets, window=settings["occlusion_window"], stride=settings["occlusion_stride"],
                     batch_size=settings["batch_size"], head=head)


def _rise(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, head: Head,
          settings: Mapping[str, Any]) -> torch.Tensor:
    return rise(model, x, targets, masks=settings["rise_masks"], cell=settings["rise_cell"], seed=settings["seed"],
                batch_size=settings["batch_size"], head=head)


METHODS: dict[str, Method] = _table(
    Method("cam", "CAM", "cam", cam_raw),
    Method("grad-cam", "Grad-CAM", "cam", grad_cam_raw),
    Method("grad-cam++", "Grad-CAM++", "cam", grad_cam_pp_raw),
    Method("score-cam", "Score-CAM", "cam", score_cam_raw, many_passes=True),
    Method("layer-cam", "LayerCAM", "cam", layer_cam_raw),
    Method("xgrad-cam", "XGrad-CAM", "cam", xgrad_cam_raw),
    Method("hires-cam", "HiResCAM", "cam", hires_cam_raw),
    Method("eigen-cam", "Eigen-CAM", "cam", eigen_cam_raw),
    Method("guided-backprop", "Guided backprop", "gradient", guided_backprop, phrase="guided backprop"),
    Method("deconvnet", "Deconvnet", "gradient", deconvnet, phrase="deconvnet"),
    Method("guided-grad-cam", "Guided Grad-CAM", "product", guided_grad_cam_product,
           reuses=("guided-backprop", "grad-cam")),
    Method("gradient", "Gradient", "gradient", gradient, phrase="plain gradient"),
    Method("integrated-gradients", "Integrated Gradients", "attribution", _integrated_gradients, many_passes=True),
    Method("smoothgrad", "SmoothGrad", "attribution", _smooth_grad, many_passes=True),
    Method("smoothgrad-squared", "SmoothGrad²", "attribution", _smooth_grad_squared, many_passes=True),
    Method("occlusion", "Occlusion", "attribution", _occlusion, phrase="occlusion", many_passes=True),
    Method("rise", "RISE", "attribution", _rise, many_passes=True),
)


def family(name: Family) -> tuple[Method, ...]:
    """The methods of one family, in the table's order."""
    return tuple(method for method in METHODS.values() if method.family == name)


def cam_family() -> tuple[Method, ...]:
    """The methods `cam_maps` computes together."""
    return family("cam")


def reusing(key: str) -> tuple[Method, ...]:
    """The products made (in part) of method `key`."""
    return tuple(method for method in METHODS.values() if key in method.reuses)
