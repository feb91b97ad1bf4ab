"""Maximizing inputs section: per channel, the pixel and Fourier syntheses beside the real images that excite it.

Under torchrun (the technique spreads) the pass over the images is sharded like the forward pass, and the
channels are optimised in blocks of CHANNELS_PER_ITEM spread over the ranks; one process runs the same
blocks in turn, so the numbers do not depend on the number of ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section, Table
from auditor.drawing import stack, titled, to_jpeg
from auditor.errors import AuditorError
from auditor.nn.layers import resolve_layer
from auditor.techniques.feature_maps import capture
from auditor.techniques.maximization import (
    METHODS,
    Exemplars,
    Maximization,
    default_channels,
    default_layer,
    exemplars,
    maximize,
    receptive_field,
    runnable_size,
)

TILE_PX = 128
CHANNELS_PER_ITEM = 4  # channels optimised together: the unit of work spread over torchrun's ranks


def _tile(image: np.ndarray | Image.Image, title: str) -> Image.Image:
    picture = image if isinstance(image, Image.Image) else Image.fromarray((image * 255).round().astype(np.uint8))
    return titled(picture.resize((TILE_PX, TILE_PX), Image.Resampling.BICUBIC), title, size=11)


def layer_activations(ctx: AuditContext, layer: str, given: list[int]) -> tuple[list[int], torch.Tensor]:
    """The channels (`given`, or spread over the layer) and their maps on every image, [N, C, h, w] on the CPU.

    One pass over the images, batch by batch (under torchrun each rank its shard of the batches); one
    image first tells the layer's channel count.
    """
    count = capture(ctx.module, [layer], ctx.inputs([0]), option="--max-layer")[layer].shape[1]
    channels = given or default_channels(count)
    if max(channels) >= count:
        raise AuditorError(f"--max-channels: {layer} has {count} channels (0 to {count - 1}), not {max(channels)}")
    return channels, ctx.image_rows(lambda batch: capture(ctx.module, [layer], batch, option="--max-layer")[layer]
                                    [:, channels])


def channel_row(ctx: AuditContext, results: dict[str, Maximization], found: Exemplars, row: int) -> Image.Image:
    """Both syntheses with the activation they reach, then the strongest real images' receptive-field crops."""
    tiles = [_tile(result.images[row].permute(1, 2, 0).cpu().numpy(), f"{method}: {float(result.activations[row]):.3g}")
             for method, result in results.items()]
    for image_index, value, box in zip(found.images[row].tolist(), found.activations[row].tolist(),
                                       found.boxes[row].tolist()):
        crop = ctx.photo(image_index).crop(tuple(int(v) for v in box))
        tiles.append(_tile(crop, f"{ctx.images.names[image_index]}: {value:.3g}"))
    return titled(stack(tiles, vertical=False, gap=4), f"channel {found.channels[row]}", size=13)


def maximization_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    requested, steps = settings["max_size"], settings["max_steps"]
    size = runnable_size(ctx.module, requested, max(ctx.model.preprocess.crop_size))
    notes = [] if size == requested else [(f"{ctx.model.name} does not run on {requested}×{requested} inputs "
                                           f"(--max-size), so the syntheses are {size}×{size} px, its input size.")]
    layer = settings["max_layer"] or default_layer(ctx.module, size)
    layer, _ = resolve_layer(ctx.module, layer, "--max-layer", ctx.model.name)
    channels, activations = layer_activations(ctx, layer, list(settings["max_channels"]))
    preprocess = ctx.model.preprocess
    blocks = [channels[i:i + CHANNELS_PER_ITEM] for i in range(0, len(channels), CHANNELS_PER_ITEM)]
    results = {method: Maximization.joined(ctx.spread(len(blocks), lambda j, method=method: maximize(
        ctx.module, layer, blocks[j], size=size, steps=steps, method=method, seed=ctx.options.seed,
        mean=preprocess.mean, std=preprocess.std))) for method in ctx.progress.each(METHODS, "methods")}
    if not ctx.is_main:  # a torchrun rank's channels are in; rank 0 draws and writes the section
        return Section(heading.name, heading.title)
    field = receptive_field(ctx.module, layer, preprocess.crop_size, seed=ctx.options.seed)
    found = exemplars(activations, list(range(len(channels))), field,
                      top=settings["max_exemplars"])
    found = Exemplars(tuple(channels), found.images, found.activations, found.boxes)
    rows = [channel_row(ctx, results, found, row) for row in range(len(channels))]
    figure = Figure(
        f"maximization-{layer}",
        f"Maximizing inputs for {len(channels)} channels of {ctx.model.name} layer {layer}: for each channel (row), "
        f"the {size}×{size} input found by plain gradient ascent on the pixels, then by the Fourier-space, "
        f"colour-decorrelated, jittered parameterisation, each titled with the channel's mean activation it "
        f"reaches; then the {found.images.shape[1]} real images with the highest mean activation, cropped to the "
        f"receptive field ({field.extent[0]}×{field.extent[1]} px) around the strongest location, titled with "
        f"their own mean activation on the whole image.",
        to_jpeg(stack(rows, gap=8)), "image/jpeg", alt=f"Maximizing inputs and exemplars for layer {layer}.")
    table_rows, per_channel = [], []
    for row, channel in enumerate(channels):
        best_image = int(found.images[row, 0])
        best = float(found.activations[row, 0])
        reached = {method: float(result.activations[row]) for method, result in results.items()}
        table_rows.append([channel, *reached.values(), best, ctx.images.names[best_image]])
        per_channel.append({"channel": channel, "synthesised": reached, "best_real": best,
                            "best_real_image": ctx.images.names[best_image],
                            "start": {m: float(r.history[0, row]) for m, r in results.items()}})
    table = Table("maximization-activations",
                  f"Mean activation of each channel of {layer}: reached by each synthesised input after {steps} "
                  f"steps, and the highest among the {len(ctx.images)} real images.",
                  ["channel", *(f"{m} synthesis" for m in results), "best real image", "image"], table_rows)
    text = (f"What each channel of {layer} responds to most, found by optimisation: starting from noise, the input "
            f"is changed step by step to raise the channel's mean activation, with the forward pass stopped at "
            f"the layer and all channels optimised together as one batch. Plain pixel ascent tends to give "
            f"high-frequency patterns that fool the channel; the Fourier parameterisation with decorrelated colour "
            f"and random jitter, scale and rotation (as in Lucid) gives smoother, more readable textures. "
            f"Compare each synthesis with the real images that excite the channel most: the two together say what "
            f"the channel detects. These are {steps}-step runs at {size}×{size} px, chosen to keep the report "
            f"fast; `--max-steps 256` or more gives sharper, more detailed patterns.")
    metrics = {"layer": layer, "size": size, "steps": steps, "methods": list(results),
               "receptive_field": list(field.extent), "channels": per_channel}
    return Section(heading.name, heading.title, text=text, blocks=[figure, table], metrics=metrics, notes=notes)
