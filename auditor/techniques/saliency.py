"""The saliency engine: the maps [N, H, W] in [0, 1] of any methods of the one table (auditor.methods).

`saliency` computes the methods asked for on one model, images and classes, dispatching on each method's
family (see auditor.methods for what `compute` is per family):
- "cam": one `cam_maps` call for every CAM-family method needed (asked for, or a part of a product asked for);
- "gradient": every method from one forward pass (a backward pass per method): the CAM family's, when it
  runs (cam_maps' input_gradients), else input_gradients'; a result that is the plain gradient
  (NoRectifierWarning) is not scored under the method's name;
- "product": made of its parts' results (`products`);
- "attribution": `compute(model, x, targets [N], head, settings) -> [N, H, W]` in [0, 1] with the caller's
  `settings` (auditor.methods.attribution_settings); a method whose gradients cannot be used is missing,
  with why.
Pure: no AuditContext; the results are on the CPU, float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.heads import SOFTMAX, Head
from auditor.methods import METHODS, Method, reusing
from auditor.nn.folding import Folds, foldable
from auditor.techniques.attribution import GradientsUnavailable
from auditor.techniques.cam import CamNotApplicable, cam_maps
from auditor.techniques.cam_layers import resolve_layer
from auditor.techniques.reconstructions import (
    RectifierWarnings,
    gradient_saliency,
    input_gradients,
    rectifier_warnings,
)

__all__ = ["Saliency", "foldable_but_layer", "products", "saliency"]


@dataclass
class Saliency:
    """Maps [N, H, W] in [0, 1] per method, and why a method is missing."""

    maps: dict[str, torch.Tensor]
    missing: dict[str, str]

    @classmethod
    def joined(cls, parts: Sequence[Saliency]) -> Saliency:
        """Consecutive calls on different images as one call's: each method's maps in image order (the
        methods every part has), every part's reasons for a missing method."""
        keys = [key for key in parts[0].maps if all(key in part.maps for part in parts)]
        missing = {key: why for part in parts for key, why in part.missing.items()}
        missing.update({key: "computed on some images only" for part in parts for key in part.maps
                        if key not in keys and key not in missing})
        return cls({key: torch.cat([part.maps[key] for part in parts]) for key in keys}, missing)


def saliency(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str | None, target: str,
             head: Head = SOFTMAX, known: dict[str, torch.Tensor] | None = None,
             unavailable: dict[str, str] | None = None, methods: Sequence[str] | None = None,
             settings: Mapping[str, Any] | None = None) -> Saliency:
    """The maps of `methods` (keys of the one table; None: every method) for `targets` [N] on `x`, in the
    table's order. Methods in `known` (already computed) or `unavailable` (known not to apply, with why)
    are not redone, nor the parts of a product that is known. `layer` and `target` are the CAM family's
    (None: cam_maps chooses the layer); `settings` the attribution family's, when it needs any."""
    chosen = list(METHODS) if methods is None else list(methods)
    unknown = [key for key in chosen if key not in METHODS]
    if unknown:
        raise ValueError(f"saliency methods: unknown {', '.join(unknown)}; use {', '.join(METHODS)}")
    maps: dict[str, torch.Tensor] = {m: v.float().cpu() for m, v in (known or {}).items()}
    missing: dict[str, str] = dict(unavailable or {})
    todo = [METHODS[key] for key in METHODS if key in chosen and key not in maps and key not in missing]
    products_todo = [method for method in todo if method.family == "product"]
    needed = {key for method in todo for key in (method.key, *(method.reuses if method in products_todo else ()))}

    cams = [key for key, method in METHODS.items() if method.family == "cam" and key in needed
            and key not in maps and key not in missing]
    rules = _gradients_needed([METHODS[key] for key in METHODS if key in needed and METHODS[key].family == "gradient"],
                              maps, products_todo)
    with rectifier_warnings() as seen:
        found = _cam_family(model, x, targets, layer, target, head, cams, maps, missing, rules) if cams else None
        if rules and found is None:
            found = {key: g.float().cpu() for key, g in input_gradients(model, x, targets, rules).items()}
    gradients = _gradient_maps(rules, found or {}, seen, maps, missing)
    for key, product in products(gradients, maps, [method.key for method in products_todo]).items():
        maps.setdefault(key, product)
    for method in products_todo:
        if method.key not in maps:
            missing.setdefault(method.key, next((missing[k] for k in method.reuses if missing.get(k)), ""))
    for method in (method for method in todo if method.family == "attribution"):
        if settings is None:
            missing[method.key] = f"{method.words}: no attribution settings were given to compute it"
            continue
        try:
            maps[method.key] = method.compute(model, x, targets, head, settings).float().cpu()
        except GradientsUnavailable as error:
            missing[method.key] = str(error)
    return Saliency({key: maps[key] for key in METHODS if key in chosen and key in maps},
                    {key: why for key, why in missing.items() if key in chosen})


def _cam_family(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str | None, target: str,
                head: Head, cams: list[str], maps: dict[str, torch.Tensor], missing: dict[str, str],
                rules: list[str]) -> dict[str, torch.Tensor] | None:
    """The CAM-family maps `cams`, from one cam_maps call, into `maps` (or why not, into `missing`); and the
    input gradients of `rules` from its forward pass (None when the CAM family does not apply at all)."""
    try:
        result = cam_maps(model, x, targets[:, None], layer, target=target, head=head, methods=cams,
                          input_gradients=rules)
    except CamNotApplicable as error:  # no spatial layer at all: the whole CAM family is out, and its products
        family = {key for key, method in METHODS.items() if method.family == "cam"}
        missing.update({key: str(error) for key, method in METHODS.items()
                        if key in family or set(method.reuses) & family})
        return None
    for key in cams:
        if key in result.maps:
            maps.setdefault(key, result.maps[key][:, 0].float().cpu())
        else:
            missing[key] = result.unavailable.get(key) or "not computed"
    return {key: g[:, 0].float().cpu() for key, g in result.input_gradients.items()}


def _gradients_needed(methods: list[Method], maps: dict[str, torch.Tensor], products_todo: list[Method]) -> list[str]:
    """The gradient methods whose input gradients are still needed: not known, or a part of a product to make."""
    return [method.key for method in methods
            if method.key not in maps or any(product.key in {p.key for p in products_todo}
                                             for product in reusing(method.key))]


def _gradient_maps(rules: list[str], found: dict[str, torch.Tensor], seen: RectifierWarnings,
                   maps: dict[str, torch.Tensor], missing: dict[str, str]) -> dict[str, torch.Tensor]:
    """The input gradients `found` for `rules`, all from one forward pass; their maps go into `maps`, and a
    result that is the plain gradient (`seen` says so) into `missing` instead."""
    rectified = [key for key in rules if key != "gradient"]  # warned in this order
    plain = dict(zip(rectified, seen.plain)) if len(seen.plain) == len(rectified) else {}
    gradients: dict[str, torch.Tensor] = {}
    for key in rules:
        if key in plain:  # the plain gradient: not scored under the method's name
            maps.pop(key, None)
            missing[key] = plain[key]
        else:
            gradients[key] = found[key]
            maps.setdefault(key, gradient_saliency(found[key]))
    return gradients


def products(gradients: dict[str, torch.Tensor], maps: dict[str, torch.Tensor],
             methods: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """The maps of the products (Guided Grad-CAM) among `methods` (None: every product) whose parts are all
    at hand: input gradients of the gradient methods, [N, H, W] maps of the CAM methods, of the same images
    and classes."""
    found: dict[str, torch.Tensor] = {}
    for method in METHODS.values():
        if method.family != "product" or (methods is not None and method.key not in methods):
            continue
        parts = [maps.get(key) if METHODS[key].family == "cam" else gradients.get(key) for key in method.reuses]
        if all(part is not None for part in parts):
            found[method.key] = gradient_saliency(method.compute(*parts))
    return found


def foldable_but_layer(model: nn.Module, layer: str | None, example: torch.Tensor) -> Folds:
    """What to fold (`auditor.nn.folding.folded`) in a model in audit mode, its BatchNorms into the convolutions
    before them except inside the CAM target `layer`, whose captured output stays the model's own: nothing for
    no layer (cam_maps would choose one, maybe a folded convolution) or one that does not resolve (cam_maps
    says why)."""
    try:
        keep = None if layer is None else [resolve_layer(model, layer).module]
    except AuditorError:
        keep = None
    return Folds() if keep is None else foldable(model, model, example, keep)
