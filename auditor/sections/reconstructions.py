"""Reconstructions section: guided backprop and deconvnet, for the top class and a layer's strongest channels.

The two methods and their names come from the one table (auditor.methods); their top-class gradients
are published (ctx.shared.gradients) for the CAM and trust sections, unless they are the plain gradient.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section
from auditor.drawing import stack, titled, to_jpeg
from auditor.methods import METHODS
from auditor.nn.layers import resolve_layer, stage_layers
from auditor.shared import GradientShared
from auditor.techniques.feature_maps import capture, strongest_channels
from auditor.techniques.reconstructions import input_gradients, rectifier_warnings

TILE_PX = 150
SHOWN = ("guided-backprop", "deconvnet")  # method keys, one row each


def gradient_picture(gradient: torch.Tensor, size: int) -> Image.Image:
    """A [C, H, W] input gradient as a size × size picture: grey is zero, scaled by its 99.5th percentile of |g|.
    RGB for three channels, grey for one, the colour channels alone for four (RGBA).

    The percentile, not the maximum, keeps one extreme pixel from turning the rest grey.
    """
    values = gradient[:3].float().cpu().numpy().transpose(1, 2, 0)
    values = values[..., 0] if values.shape[-1] == 1 else values
    scale = float(np.percentile(np.abs(values), 99.5)) or 1.0
    pixels = (np.clip(0.5 + 0.5 * values / scale, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)


def default_recon_layer(ctx: AuditContext, example: torch.Tensor) -> str:
    """A stage two thirds of the way up: deep enough for parts, shallow enough for sharp reconstructions."""
    stages = stage_layers(ctx.module, example)
    if not stages:
        raise ValueError("no convolutional stage found; choose a layer with --recon-layer")
    return stages[round(2 * (len(stages) - 1) / 3)]


def reconstruct(ctx: AuditContext, batch: torch.Tensor, classes: torch.Tensor, layer: str,
                channels: torch.Tensor) -> tuple[dict[str, list[torch.Tensor]], list[str], bool]:
    """Per method key, [class gradients, channel 1 gradients, ...] (each N×3×H×W), the warnings raised, and
    whether the results are the plain gradient (no rectifier seen)."""
    with rectifier_warnings() as seen:  # each call: one forward pass for both methods (and every channel)
        by_class = input_gradients(ctx.module, batch, classes, SHOWN)
        results = {key: [by_class[key].cpu()] for key in SHOWN}
        if channels.shape[1]:
            by_channel = input_gradients(ctx.module, batch, channels, SHOWN, layer=layer)
            for key in SHOWN:
                results[key] += list(by_channel[key].cpu().unbind(dim=1))
    return results, seen.messages, bool(seen.plain)


def image_figure(ctx: AuditContext, index: int, row: int, results: dict[str, list[torch.Tensor]],
                 class_name: str, probability: float, layer: str, channels: list[int], plain: bool) -> Figure:
    """The photo, then one row per method: the top class and each strong channel projected to pixels."""
    name = ctx.images.names[index]
    photo = ctx.photo(index, TILE_PX)
    targets = [f"{class_name} ({probability:.2f})"] + [f"{layer} ch {c}" for c in channels]
    method_rows = []
    for key, gradients in results.items():
        tiles = [gradient_picture(g[row], TILE_PX) for g in gradients]
        panels = stack([titled(tile, target, size=11) for tile, target in zip(tiles, targets)], vertical=False, gap=4)
        method_rows.append(titled(panels, METHODS["gradient" if plain else key].words, size=13))
    picture = stack([titled(photo, name, size=11), stack(method_rows, gap=8)], vertical=False, gap=12)
    methods = "the plain input gradient (see the note)" if plain else "guided backprop (top) and deconvnet (bottom)"
    of_channels = (f" and of the {len(channels)} channels of layer {layer} with the largest mean activation on "
                   f"this image, each from its single strongest activation" if channels else "")
    caption = (f"Reconstructions for {name} by {methods}: the projection to pixel space of the predicted class "
               f"{class_name} (probability {probability:.3f}){of_channels}. "
               f"Grey is zero; colours show the sign and size of the gradient in each colour channel, each panel "
               f"scaled to its own 99.5th percentile.")
    return Figure(f"reconstructions-{name}", caption, to_jpeg(picture), "image/jpeg",
                  alt=f"Guided backprop and deconvnet reconstructions for {name}.")


def reconstructions_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    shown = ctx.gallery_indices()
    batch = ctx.inputs(shown)
    classes = ctx.forward.top_indices[shown, 0]
    layer, channels, skipped = "", torch.zeros(len(shown), 0, dtype=torch.long), []
    if isinstance(ctx.module, torch.jit.ScriptModule):
        skipped.append("A TorchScript model accepts no hooks, so only the top class is projected, not the "
                       "channels of a layer.")
    elif settings["recon_channels"]:
        try:
            layer = settings["recon_layer"] or default_recon_layer(ctx, batch[:1])
        except ValueError as error:
            skipped.append(f"Only the top class is projected: {error}.")
        else:
            layer, _ = resolve_layer(ctx.module, layer, "--recon-layer", ctx.model.name)
    count = settings["recon_channels"] if layer else 0

    def one(i: int) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]], list[str], bool]:
        """Image i alone (the unit of work spread over torchrun's ranks): its strongest channels, its
        projections, the warnings raised and whether they are the plain gradient."""
        image = batch[i:i + 1]
        strongest = (strongest_channels(capture(ctx.module, [layer], image, option="--recon-layer")[layer],
                                        count).indices.cpu() if count else channels[i:i + 1])
        return (strongest, *reconstruct(ctx, image, classes[i:i + 1].to(ctx.device), layer,
                                        strongest.to(ctx.device)))

    parts = ctx.spread(len(shown), one)
    if not ctx.is_main:  # a torchrun rank's share is in; rank 0 publishes and writes the section
        return Section(heading.name, heading.title)
    channels = torch.cat([part[0] for part in parts])
    results = {key: [torch.cat([part[1][key][j] for part in parts]) for j in range(len(parts[0][1][key]))]
               for key in parts[0][1]}
    notes = list(dict.fromkeys(note for part in parts for note in part[2]))
    plain = any(part[3] for part in parts)
    if not plain:
        ctx.shared.gradients.update({key: GradientShared(shown, gradients[0]) for key, gradients in results.items()})
    blocks = []
    for row, index in enumerate(shown):
        class_index = int(classes[row])
        blocks.append(image_figure(ctx, index, row, results, ctx.class_names[class_index],
                                   float(ctx.forward.probabilities[index, class_index]), layer,
                                   channels[row].tolist(), plain))
    text = ("Two ways to project what a unit responds to back into pixel space. Deconvnet (Zeiler & Fergus, "
            "2014) runs the network backwards, unpooling to the max locations, rectifying the signal at every "
            "ReLU and applying the transposed filters. Guided backpropagation (Springenberg et al., 2015) passes "
            "a gradient back only where both the forward activation and the gradient are positive, which gives "
            "sharper pictures. Both highlight image structure well, but they are known to depend little on the "
            "class or even on the weights (Adebayo et al., 2018): read them as what the unit's receptive field "
            "contains, not as evidence of what the model decides on.")
    if plain:
        notes = ["The model's rectifiers could not be intercepted (" + "; ".join(notes) + "), so the panels "
                 "show the plain input gradient, labelled as such, not guided backprop or deconvnet."]
    notes += skipped
    metrics = {"layer": layer, "images": [
        {"image": ctx.images.names[i], "class": ctx.class_names[int(classes[r])],
         "channels": channels[r].tolist()} for r, i in enumerate(shown)]}
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics, notes=notes)
