"""Feature maps section: per layer, each shown image beside its most active channels (one forward pass)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section
from auditor.drawing import colorize, stack, tile_grid, titled, to_jpeg, upscale
from auditor.nn.layers import stage_layers
from auditor.techniques.feature_maps import capture, strongest_channels

TILE_PX = 64
COLUMNS = 8


def default_feature_layers(ctx: AuditContext, example: torch.Tensor) -> list[str]:
    """Three stage outputs, early, middle and late: enough to see features grow coarse and abstract."""
    stages = stage_layers(ctx.module, example)
    if len(stages) <= 3:
        return stages
    return [stages[0], stages[len(stages) // 2], stages[-1]]


def channel_picture(values: np.ndarray) -> np.ndarray:
    """One channel scaled to its own range: grey levels when non-negative, blue-white-red around 0 when signed."""
    low, high = float(values.min()), float(values.max())
    if low < 0:
        limit = max(high, -low)
        return colorize(values, "RdBu_r", -limit, limit)
    return colorize(values, "gray", 0.0, high)


def layer_figure(layer: str, maps: torch.Tensor, ctx: AuditContext, shown: list[int], channels: int) -> Figure:
    """Rows of (photo, grid of the `channels` channels with the largest mean activation), one per image."""
    strongest = strongest_channels(maps, channels)
    rows = []
    for row, image_index in enumerate(shown):
        chosen = maps[row, strongest.indices[row]].float().numpy()
        grid = tile_grid([upscale(channel_picture(m), TILE_PX) for m in chosen], COLUMNS,
                         [f"{int(c)}" for c in strongest.indices[row]])
        photo = ctx.photo(image_index, grid.height)
        rows.append(stack([titled(photo, ctx.images.names[image_index]), titled(grid, "strongest channels")],
                          vertical=False, gap=10))
    _, c, h, w = maps.shape
    signed = bool((maps < 0).any())
    scale = ("blue negative, white zero, red positive" if signed else "black zero, white the channel's maximum")
    caption = (f"Feature maps of {ctx.model.name} layer {layer} ({c} channels of {h}×{w}): for each image, the "
               f"{strongest.indices.shape[1]} channels with the largest mean activation, strongest first, with the "
               f"channel index in the corner. Each tile is scaled to its own range ({scale}); {h}×{w} maps are "
               f"enlarged without smoothing. Mean activations are in report.json.")
    return Figure(f"feature-maps-{layer}", caption, to_jpeg(stack(rows, gap=10)), "image/jpeg",
                  alt=f"Most active channels of layer {layer} for {len(shown)} images.")


def feature_maps_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    shown = ctx.gallery_indices()
    batch = ctx.inputs(shown)
    layers = list(settings["feature_layers"]) or default_feature_layers(ctx, batch[:1])
    # one forward pass for every layer, an image at a time (the unit of work spread over torchrun's ranks)
    parts = ctx.spread(len(shown), lambda i: {k: v.cpu() for k, v in capture(ctx.module, layers, batch[i:i + 1]).items()})
    if not ctx.is_main:  # a torchrun rank's share is in; rank 0 writes the section
        return Section(heading.name, heading.title)
    maps = {layer: torch.cat([part[layer] for part in parts]) for layer in parts[0]}
    blocks = [layer_figure(layer, maps[layer], ctx, shown, settings["feature_channels"]) for layer in maps]
    metrics = {"layers": {layer: {"shape": list(m.shape[1:]),
                                  "strongest": strongest_channels(m, settings["feature_channels"]).indices.tolist(),
                                  "mean_activation": float(m.float().mean())} for layer, m in maps.items()},
               "images": [ctx.images.names[i] for i in shown]}
    text = ("What the chosen layers compute on each image: their activations (feature maps), captured with a hook on "
            "every layer, one forward pass an image. Early layers respond to edges and colours at full "
            "resolution; later ones to parts and textures on a coarser grid. A channel that is bright on the "
            "object and dark elsewhere is one the model uses to find it.")
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics)
