"""Attribution section: Integrated Gradients, SmoothGrad, occlusion and RISE per image, for its top class.

The methods, their order and names are those of the one table (auditor.methods, family "attribution");
each is one call of auditor.techniques.attribution, batched over its path steps, noisy copies, windows
or masks. Occlusion and RISE need only forward passes, so they explain a model whose gradients cannot
be used (a TorchScript model, one that detaches its input): the section says so rather than failing.
The maps are published (ctx.shared.attribution) for the trust section, with the settings used, and so
are those of the trust section's random other class, computed in the same passes (occlusion and RISE read
every class from one forward pass). Each image is one call, spread over torchrun's ranks (the technique
spreads), so the numbers are the same with any number of ranks.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section, Table
from auditor.drawing import colorbar, overlay, stack, titled, to_jpeg
from auditor.methods import METHODS, attribution_settings, passes
from auditor.nn.hooks import has_torchscript
from auditor.sections.cam import class_title, colour_words, peak
from auditor.shared import AttributionShared
from auditor.techniques.attribution import GradientsUnavailable
from auditor.techniques.trust.randomization import random_other_class

TILE_PX = 160
INTRODUCTION = ("Pixel attributions say which input pixels a class score depends on, one pixel at a time rather "
                "than through one layer's feature maps. Integrated Gradients (Sundararajan et al., 2017) sums the "
                "gradient along the straight path from a black image to the photo; SmoothGrad (Smilkov et al., 2017) "
                "averages the gradient over noisy copies, which removes its speckle; occlusion (Zeiler and Fergus, "
                "2014) hides one square at a time and records how far the score falls; RISE (Petsiuk et al., 2018) "
                "weights random masks by the probability the model gives to each masked image. The last two only "
                "run the model forward, so they need neither gradients nor hooks.")


def attribution_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    rows = ctx.gallery_indices()[:settings["attribution_images"]]
    x = ctx.inputs(rows)
    top = ctx.forward.top_indices[rows, 0].to(ctx.device)
    # the trust section's other class too: occlusion and RISE read it from the same forward passes
    other = random_other_class(top, len(ctx.class_names), ctx.options.seed) if len(ctx.class_names) > 1 else top
    used = attribution_settings(settings, ctx.options.batch_size, ctx.options.seed, (x.shape[-2], x.shape[-1]))
    maps: dict[str, torch.Tensor] = {}
    other_maps: dict[str, torch.Tensor] = {}
    missing: dict[str, str] = {}
    seconds: dict[str, float] = {}
    classes = torch.stack([top, other], dim=1)
    for key in ctx.progress.each(settings["attribution_methods"], "methods"):
        started = time.perf_counter()
        try:  # an image a call, as on torchrun's ranks
            both = torch.cat(ctx.spread(len(rows), lambda i, key=key: METHODS[key].compute(
                ctx.module, x[i:i + 1], classes[i:i + 1], ctx.head, used).float()))
        except GradientsUnavailable as error:  # raised on every rank alike
            missing[key] = str(error)
        else:
            maps[key], other_maps[key] = both[:, 0], both[:, 1]
        seconds[key] = round(time.perf_counter() - started, 3)
    if not ctx.is_main:  # a torchrun rank's share is in; rank 0 publishes and writes the section
        return Section(heading.name, heading.title)
    ctx.shared.attribution = AttributionShared(rows, maps, used, missing, other.cpu(), other_maps)
    notes = [f"{METHODS[key].name} does not apply: {why}" for key, why in missing.items()]
    if has_torchscript(ctx.module):
        notes.append("The model is TorchScript, which takes no hooks: occlusion and RISE only run it forward, "
                     "so they explain it as they would any model.")
    if missing and {"occlusion", "rise"} & set(maps):
        notes.append("Occlusion and RISE need no gradients: they are the attributions to read for this model.")
    blocks: list[Any] = []
    if maps:
        blocks.append(maps_figure(ctx, rows, top, maps))
    costs = [[METHODS[key].name, passes(key, used)] for key in maps]
    blocks += [Table("attribution-cost", "What each method costs: model passes per image (forward and backward for "
                                         "the gradient methods, forward only for occlusion and RISE), with the "
                                         "trust section's random other class explained in the same passes; "
                                         "report.json has the seconds.",
                     ["method", "passes per image"], costs)] if costs else []
    per_image = [{"image": ctx.images.names[index], "class": ctx.class_names[int(top[row])],
                  "peak_xy": {key: peak(found[row]) for key, found in maps.items()}}
                 for row, index in enumerate(rows)]
    metrics = {"methods": list(maps), "unavailable": missing, "settings": {k: v for k, v in used.items()},
               "seconds": seconds, "images": per_image}
    return Section(heading.name, heading.title, text=INTRODUCTION, blocks=blocks, metrics=metrics, notes=notes)


def clipped(heat: torch.Tensor) -> np.ndarray:
    """A map in [0, 1] for drawing, up to its 99th percentile: gradient attributions are heavy-tailed."""
    values = heat.numpy()
    top = float(np.percentile(values, 99))
    return np.clip(values / top, 0.0, 1.0) if top > 0 else values


def maps_figure(ctx: AuditContext, rows: list[int], top: torch.Tensor, maps: dict[str, torch.Tensor]) -> Figure:
    """Rows: images; columns: the photo, then each method's map over it."""
    lines = []
    for row, index in enumerate(rows):
        photo = ctx.photo(index, TILE_PX)
        tiles = [titled(titled(photo, class_title(ctx, index, int(top[row])), size=11), ctx.images.names[index],
                        size=11)]
        tiles += [titled(Image.fromarray(overlay(photo, clipped(found[row]), cmap=ctx.options.colormap)),
                         METHODS[key].name, size=11) for key, found in maps.items()]
        lines.append(stack(tiles, vertical=False, gap=4))
    bar = colorbar(ctx.options.colormap, 0.0, 1.0, 300, "attribution (each map up to its 99th percentile)")
    names = ", ".join(METHODS[key].name for key in maps)
    caption = (f"Pixel attributions of each image's top class (rows): {names} (columns), over the image as the "
               f"model saw it, {colour_words(ctx.options.colormap)}; each map is drawn up to its own 99th percentile, so "
               f"a few extreme pixels do not leave the rest dark. The "
               f"gradient methods show fine detail and speckle; occlusion and RISE are coarse, at the scale of their "
               f"windows and mask cells, but measure what hiding a region does to the score.")
    return Figure("attribution-maps", caption, to_jpeg(stack([*lines, bar], gap=8)), "image/jpeg",
                  alt="Pixel attribution maps per image and method.")
