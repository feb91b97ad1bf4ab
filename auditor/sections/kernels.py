"""Conv kernels section: each chosen layer's filters as one image grid (auditor.techniques.kernels)."""

from __future__ import annotations

from typing import Any

import numpy as np

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section
from auditor.drawing import colorbar, colorize, stack, tile_grid, to_png, upscale
from auditor.techniques.kernels import KernelTiles, default_kernel_layers, kernel_tiles

TILE_PX = 36  # each kernel drawn this large, nearest neighbour: a 3×3 kernel shows 12-pixel cells


def kernel_figure(tiles: KernelTiles, count: int, model_name: str) -> Figure:
    """A grid of the first `count` filters; signed slices get a diverging colour bar centred on zero."""
    shown = tiles.tiles[:count]
    out, _, kh, kw = tiles.weight_shape
    if tiles.kind == "rgb":
        images = [upscale((tile * 255).round().astype(np.uint8), TILE_PX) for tile in shown]
        grid = tile_grid(images, columns=16, pad=2)
        how = ("each filter's three input channels drawn as red, green and blue, min-max normalised per filter "
               "(grey is zero weight only for a filter symmetric around zero)")
    else:
        limit = tiles.limit or 1.0
        images = [upscale(colorize(tile, "RdBu_r", -limit, limit), TILE_PX) for tile in shown]
        grid = stack([tile_grid(images, columns=16, pad=2),
                      colorbar("RdBu_r", -limit, limit, min(360, 16 * (TILE_PX + 2)), "weight")])
        how = (f"one input-channel slice per filter ({tiles.slice_rule}), on a diverging scale from −{limit:.3g} "
               f"(blue) through 0 (white) to +{limit:.3g} (red), shared by all tiles")
    more = f"the first {len(shown)} of {out} filters" if len(shown) < out else f"all {out} filters"
    grouped = f", groups={tiles.groups}" if tiles.groups > 1 else ""
    shape = "×".join(map(str, tiles.weight_shape))
    caption = (f"Convolution kernels of {model_name} layer {tiles.layer} (weights {shape}{grouped}): {more}, "
               f"{kh}×{kw} each, in filter order left to right; {how}.")
    return Figure(f"kernels-{tiles.layer}", caption, to_png(grid), "image/png",
                  alt=f"Grid of {len(shown)} {kh}×{kw} kernels of layer {tiles.layer}.")


def kernels_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    layers = list(settings["kernel_layers"]) or default_kernel_layers(ctx.module)
    if not layers:
        return Section(heading.name, heading.title, text=f"{ctx.model.name} has no 2-D convolution, so there are "
                                                         "no kernels to draw.")
    all_tiles = [kernel_tiles(ctx.module, layer) for layer in layers]
    blocks = [kernel_figure(tiles, settings["kernel_count"], ctx.model.name) for tiles in all_tiles]
    text = ("What the convolution weights look like. In the first layer, trained filters are typically "
            "oriented edges, colour-opponent blobs and gratings: smooth, structured patterns; noisy filters "
            "suggest an untrained or damaged model. Deeper layers combine many input channels, so each tile shows "
            "one slice of a filter, and their structure is harder to read.")
    metrics = {"layers": [{"layer": t.layer, "kind": t.kind, "weight_shape": list(t.weight_shape),
                           "groups": t.groups, "limit": t.limit, "slice": t.slice_rule} for t in all_tiles]}
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics)
