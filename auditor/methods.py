"""The one table of saliency methods: each declared once, with its key, name, family, function and reuses.

The CAM section, the trust section, the reconstructions section and report.json read it: `cam_maps`
computes every method of the "cam" family, the trust section scores every method in the table's order
(the order of its rows, legends and report.json), and a "product" is made of the methods it reuses.
Adding a method is one function (in auditor.techniques) and one entry here.

Families, and what `compute` is for each:
- "cam": `compute(inputs: CamInputs) -> [N, K, h, w]`, the raw map at the target layer, made from the
  one forward pass and (at most) one batched backward that `cam_maps` shares among the family; it is
  upsampled to the input and min-max normalised to [0, 1]. May raise CamNotApplicable (classic CAM).
- "gradient": `compute(model, x, targets [N], layer=None) -> [N, 3, H, W]`, an input gradient, drawn as
  a picture and scored as `gradient_saliency` (largest |gradient| over colour channels, in [0, 1]).
  A result that is the plain gradient (NoRectifierWarning) is not shown or scored under its name.
- "product": `compute(*results of reuses, in order) -> [N, 3, H, W]`, an input-gradient-like product of
  other methods' results (a gradient method's gradients, a CAM method's [N, H, W] maps of the same
  images and classes); scored as `gradient_saliency`. Missing when any method it reuses is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from auditor.techniques.cam import (
    cam_raw,
    grad_cam_pp_raw,
    grad_cam_raw,
    guided_grad_cam_product,
)
from auditor.techniques.reconstructions import deconvnet, gradient, guided_backprop

Family = Literal["cam", "gradient", "product"]


@dataclass(frozen=True)
class Method:
    """One saliency method."""

    key: str  # report.json, ctx.shared and CLI key: "grad-cam"
    name: str  # display name in tables, legends and figure rows: "Grad-CAM"
    family: Family  # how it is computed, and what `compute` takes (see the module doc)
    compute: Callable[..., torch.Tensor]
    reuses: tuple[str, ...] = ()  # "product": the keys of the methods whose results `compute` takes, in order
    phrase: str = ""  # the name mid-sentence in captions and notes ("guided backprop"); `name` when empty

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


METHODS: dict[str, Method] = _table(
    Method("cam", "CAM", "cam", cam_raw),
    Method("grad-cam", "Grad-CAM", "cam", grad_cam_raw),
    Method("grad-cam++", "Grad-CAM++", "cam", grad_cam_pp_raw),
    Method("guided-backprop", "Guided backprop", "gradient", guided_backprop, phrase="guided backprop"),
    Method("deconvnet", "Deconvnet", "gradient", deconvnet, phrase="deconvnet"),
    Method("guided-grad-cam", "Guided Grad-CAM", "product", guided_grad_cam_product,
           reuses=("guided-backprop", "grad-cam")),
    Method("gradient", "Gradient", "gradient", gradient, phrase="plain gradient"),
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
