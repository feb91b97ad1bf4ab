"""Activation maximisation: the input each channel of a layer responds to most, and the real images
(dataset exemplars) that excite it, so a reader can compare what a channel "likes" with what it sees.

Fast by design: every channel of a call is one image of a single batch (one forward and backward per
step), the forward pass stops at the layer, BatchNorms are folded into the convolutions before them,
parameters are frozen, and gradients flow to the images only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.preprocess import IMAGENET_MEAN, IMAGENET_STD
from auditor.nn.folding import folded_batch_norms
from auditor.nn.hooks import truncated_forward
from auditor.nn.layers import channel_count, channels_first, input_channels, resolve_layer, stage_layers
from auditor.nn.memory_format import preferred_layout
from auditor.nn.record_calls import record_calls
from auditor.nn.restore import audit_mode
from auditor.techniques.parameterization import (
    FourierImage,
    Jitter,
    PixelImage,
    random_affine,
)

METHODS = ("pixel", "fourier")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")
DEFAULT_SIZE = 112
DEFAULT_STEPS = 48
DEFAULT_CHANNEL_COUNT = 8
# Adam. pixel: in RGB units; fourier: twice Lucid's 0.05, since we take 48 steps where Lucid takes 512
LEARNING_RATES = {"pixel": 0.02, "fourier": 0.1}
DIVERSITY_WEIGHT = 1.0
_Image = PixelImage | FourierImage
_Triple = tuple[float, float, float]
_Run = Callable[[torch.Tensor], Any]  # truncated_forward's run(x)
_REJECTED_INPUT = (RuntimeError, ValueError, AssertionError)  # how models refuse an input size they cannot take


@dataclass(frozen=True)
class Maximization:
    """What maximize returns: the images and how strongly each excites its channel."""

    layer: str  # dotted name
    method: str
    channels: tuple[int, ...]
    images: torch.Tensor  # [C, 3, H, W] RGB in [0, 1] (maximize_diverse: [C, K, 3, H, W])
    activations: torch.Tensor  # [C] mean of the channel's map on the final image, untransformed ([C, K])
    history: torch.Tensor  # [steps, C] the objective before each update; row 0 is the random start ([steps, C, K])

    @classmethod
    def joined(cls, parts: Sequence[Maximization]) -> Maximization:
        """Runs of the same layer and method on consecutive blocks of channels as one run's."""
        first = parts[0]
        return cls(first.layer, first.method, tuple(c for part in parts for c in part.channels),
                   torch.cat([part.images for part in parts]), torch.cat([part.activations for part in parts]),
                   torch.cat([part.history for part in parts], dim=1))


@dataclass(frozen=True)
class ReceptiveField:
    """Where each location of a layer's map looks in the input, found by gradients (see receptive_field).

    Location (i, j) sees rows origin[0] + stride[0] * i up to extent[0] rows further, columns likewise,
    clipped to the input. A layer that sees the whole input (global pooling, attention) has stride 0 and
    its box is the whole input.
    """

    origin: tuple[int, int]  # (row, column) of location (0, 0)'s box, before clipping; may be negative
    stride: tuple[int, int]
    extent: tuple[int, int]  # (rows, columns)
    input_size: tuple[int, int]  # (H, W) of the input the boxes refer to
    map_size: tuple[int, int]  # (h, w) of the layer's map at that input size

    def boxes(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[..., 4] boxes (x0, y0, x1, y1) in input pixels, PIL's crop order, for map locations (rows, cols)."""
        y0 = self.origin[0] + self.stride[0] * rows
        x0 = self.origin[1] + self.stride[1] * cols
        height, width = self.input_size
        return torch.stack([x0.clamp(0, width), y0.clamp(0, height),
                            (x0 + self.extent[1]).clamp(0, width), (y0 + self.extent[0]).clamp(0, height)], dim=-1)


@dataclass(frozen=True)
class Exemplars:
    """For each channel, the real images that excite it most and where."""

    channels: tuple[int, ...]
    images: torch.Tensor  # [C, k] indices into the real images, strongest first
    activations: torch.Tensor  # [C, k] mean of the channel's map: the measure maximize optimises
    boxes: torch.Tensor  # [C, k, 4] (x0, y0, x1, y1): the receptive field of the strongest location


def default_layer(model: nn.Module, size: int = DEFAULT_SIZE) -> str:
    """The middle stage (resnet50: layer2; EfficientNet-Lite0: _blocks.7): mid-level textures and parts,
    and a truncated forward pass that costs about half the network."""
    dtype, device = _dtype_device(model)
    stages = stage_layers(model, _blank(model, size, dtype, device))
    if not stages:
        raise AuditorError("--max-layer: found no convolutional stage in the model; name a layer "
                           "(`auditor layers` lists them)")
    return stages[len(stages) // 2]


def runnable_size(model: nn.Module, size: int, fallback: int) -> int:
    """`size` if the model runs on size x size inputs, else `fallback` (its own input size): ViTs and MaxViT
    take one size only, inception_v3 nothing below 75 px. One forward pass of a blank image decides."""
    dtype, device = _dtype_device(model)
    try:
        with audit_mode(model), torch.no_grad():
            model(_blank(model, size, dtype, device))
    except _REJECTED_INPUT:
        return fallback
    return size


def default_channels(channel_count: int, count: int = DEFAULT_CHANNEL_COUNT) -> list[int]:
    """`count` channels spread evenly over the layer (80 channels, 8: 0, 10, ..., 70)."""
    count = min(count, channel_count)
    return [i * channel_count // count for i in range(count)]


def maximize(model: nn.Module, layer: str | nn.Module | None = None, channels: Sequence[int] | None = None,
             size: int = DEFAULT_SIZE, steps: int = DEFAULT_STEPS, method: str = "fourier", seed: int = 0,
             mean: _Triple = IMAGENET_MEAN, std: _Triple = IMAGENET_STD, lr: float | None = None,
             jitter: Jitter = Jitter()) -> Maximization:
    """One image per channel that maximises the channel's mean activation, all channels in one batch.

    `layer` None picks default_layer, `channels` None default_channels. `mean`/`std` are the model's
    normalisation: the model sees normalised input, the images returned are the RGB a person sees.
    Each channel's image depends only on (seed, channel), not on which other channels are in the batch.
    """
    return _maximize(model, layer, channels, 1, 0.0, size, steps, method, seed, mean, std, lr, jitter)


def maximize_diverse(model: nn.Module, layer: str | nn.Module | None = None,
                     channels: Sequence[int] | None = None, copies: int = 4,
                     diversity: float = DIVERSITY_WEIGHT, size: int = DEFAULT_SIZE, steps: int = DEFAULT_STEPS,
                     method: str = "fourier", seed: int = 0, mean: _Triple = IMAGENET_MEAN,
                     std: _Triple = IMAGENET_STD, lr: float | None = None, jitter: Jitter = Jitter()) -> Maximization:
    """`copies` images per channel, pushed apart by Lucid's diversity term: `diversity` times the cosine
    similarity of the layer's Gram matrices between the copies of one channel (a channel often responds
    to several distinct patterns; one image shows only one). Arrays gain a copies axis after C."""
    if copies < 1:
        raise AuditorError(f"copies: {copies} is fewer than one; ask for at least one image per channel")
    return _maximize(model, layer, channels, copies, diversity, size, steps, method, seed, mean, std, lr, jitter)


def receptive_field(model: nn.Module, layer: str | nn.Module, size: int | tuple[int, int],
                    seed: int = 0) -> ReceptiveField:
    """The receptive field of `layer` for inputs of `size` (a side, or (height, width)), from input gradients:
    any architecture. Boxes are searched on square inputs of the larger side.

    The gradient of one location's activations (all channels) with respect to a random input is nonzero
    exactly on the pixels that location sees. Two neighbouring central locations, two random inputs each
    (a dead ReLU on one input cannot hide a pixel), one batched backward pass: the first box gives the
    extent, the shift between them the stride. If the box touches the border the input is doubled (the
    forward stops at the layer, so the classifier's input size does not matter), at most twice; a box
    that still touches it, or a model that refuses the larger input, counts as the whole input.
    """
    name, module = resolve_layer(model, layer, "--max-layer")
    dtype, device = _dtype_device(model)
    generator = torch.Generator().manual_seed(seed)
    height, width = (size, size) if isinstance(size, int) else size
    size = max(height, width)
    with audit_mode(model), truncated_forward(model, module) as run:
        map_size = _map_size(run, name, _blank(model, (height, width), dtype, device))
        probe = size
        for _ in range(3):
            try:
                boxes, probe_map = _central_boxes(run, name, probe, input_channels(model), dtype, device,
                                                  generator)
            except _REJECTED_INPUT:
                if probe == size:
                    raise
                break  # a model of fixed input size (ViT's size check, MaxViT's partitions): the box stays whole
            if boxes is not None and all(_inside(box, probe) for box in boxes):
                first, second = boxes
                stride = (second[0] - first[0], second[1] - first[1])
                centre = ((probe_map[0] - 1) // 2, (probe_map[1] - 1) // 2)
                origin = (first[0] - stride[0] * centre[0], first[1] - stride[1] * centre[1])
                return ReceptiveField(origin, stride, (first[2] - first[0], first[3] - first[1]),
                                      (height, width), map_size)
            probe *= 2
    return ReceptiveField((0, 0), (0, 0), (height, width), (height, width), map_size)


def exemplars(activations: torch.Tensor, channels: Sequence[int], field: ReceptiveField,
              top: int = 4) -> Exemplars:
    """The `top` real images per channel by mean activation, with the receptive-field box around each
    one's strongest location. `activations`: the layer's output on the real images [N, K, h, w] (or
    [N, K]), at the input size `field` was computed for."""
    maps = activations.detach()
    maps = maps[..., None, None] if maps.ndim == 2 else maps
    if tuple(maps.shape[2:]) != field.map_size:
        raise ValueError(f"activations of {tuple(maps.shape[2:])} locations, the receptive field is for "
                         f"{field.map_size}: compute both at the same input size")
    chosen = maps[:, list(channels)].transpose(0, 1).flatten(2)  # [C, N, h*w]
    values, images = chosen.mean(dim=2).topk(min(top, maps.shape[0]), dim=1)
    strongest = chosen[torch.arange(len(channels))[:, None], images].argmax(dim=2)  # [C, k]
    boxes = field.boxes(strongest // maps.shape[3], strongest % maps.shape[3])
    return Exemplars(tuple(channels), images, values, boxes)


def _maximize(model: nn.Module, layer: str | nn.Module | None, channels: Sequence[int] | None, copies: int,
              diversity: float, size: int, steps: int, method: str, seed: int, mean: _Triple, std: _Triple,
              lr: float | None, jitter: Jitter) -> Maximization:
    """The optimisation shared by maximize and maximize_diverse: one batch of C x copies images."""
    _check_options(method, steps, size)
    name, module = resolve_layer(model, default_layer(model, size) if layer is None else layer, "--max-layer")
    dtype, device = _dtype_device(model)
    with audit_mode(model):
        channel_count = _channel_count(model, name, size, dtype, device)
        chosen = tuple(default_channels(channel_count) if channels is None else channels)
        _check_channels(chosen, name, channel_count)
        targets = torch.tensor([c for c in chosen for _ in range(copies)], device=device)
        seeds = [_image_seed(seed, c, k) for c in chosen for k in range(copies)]
        image: _Image = (PixelImage if method == "pixel" else FourierImage).create(seeds, size, dtype, device)
        to_input = _model_input(input_channels(model), mean, std, dtype, device)
        optimizer = torch.optim.Adam([image.parameter], lr=lr or LEARNING_RATES[method])
        generator = torch.Generator().manual_seed(seed)
        history = []
        example = torch.randn(1, input_channels(model), size, size, generator=torch.Generator().manual_seed(seed))
        example = example.to(device, dtype)
        with folded_batch_norms(model, module, example), truncated_forward(model, module) as run:
            layout = preferred_layout(run, example)
            for _ in range(steps):
                rgb = image.rgb() if method == "pixel" else random_affine(image.rgb(), jitter, generator)
                output = channels_first(run(to_input(rgb).contiguous(memory_format=layout)), (size, size))
                objective = _channel_means(output, targets)
                loss = -objective.sum()
                if copies > 1 and diversity:
                    loss = loss + diversity * _gram_similarity(output, copies).sum()
                (image.parameter.grad,) = torch.autograd.grad(loss, [image.parameter])
                optimizer.step()
                image.constrain()
                history.append(objective.detach())
            with torch.no_grad():
                rgb = image.rgb()
                normalised = to_input(rgb).contiguous(memory_format=layout)
                final = _channel_means(channels_first(run(normalised), (size, size)), targets)
    shape = (len(chosen), copies) if copies > 1 else (len(chosen),)
    # float32 out, also under bf16 / fp16 autocast (whose matrix products give the colours in half precision)
    return Maximization(name, method, chosen, rgb.detach().float().reshape(*shape, *rgb.shape[1:]).cpu(),
                        final.float().reshape(shape).cpu(), torch.stack(history).float().reshape(steps, *shape).cpu())


def _check_options(method: str, steps: int, size: int) -> None:
    if method not in METHODS:
        raise AuditorError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if steps < 1:
        raise AuditorError(f"--max-steps: {steps} is fewer than one; give a positive number of steps")
    if size < 8:
        raise AuditorError(f"--max-size: {size} pixels is too small; use at least 32")


def _check_channels(channels: tuple[int, ...], name: str, channel_count: int) -> None:
    if not channels:
        raise AuditorError("--max-channels: no channels given; give indices such as 0,5 or a range 0:80:10")
    bad = [c for c in channels if not 0 <= c < channel_count]
    if bad:
        raise AuditorError(f"--max-channels: {name!r} has {channel_count} channels (0-{channel_count - 1}); "
                           f"{bad[0]} is out of range")


def _channel_count(model: nn.Module, name: str, size: int, dtype: torch.dtype, device: torch.device) -> int:
    """The layer's channel count, from one full forward pass on a blank image that also makes sure the
    layer runs exactly once: a shared module (Lite0's ReLU6) has no single output to maximise."""
    try:
        calls = record_calls(model, _blank(model, size, dtype, device))
    except RuntimeError as error:
        raise AuditorError(f"--max-size: the model cannot run on {size}x{size} inputs "
                           f"({str(error).splitlines()[0]}); use a larger size") from None
    shapes = calls[name].shapes
    if len(shapes) != 1:
        raise AuditorError(f"--max-layer: {name!r} ran {len(shapes)} times in one forward pass (a shared "
                           "module), so it has no single output; choose the block or convolution around it")
    if len(shapes[0]) < 2:
        raise AuditorError(f"--max-layer: {name!r} outputs {shapes[0]}, which has no channels; "
                           "choose a convolutional or linear layer")
    return channel_count(shapes[0], (size, size))


def _dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first parameter or buffer (float32 on the CPU if none)."""
    tensor = next(iter([*model.parameters(), *model.buffers()]), torch.zeros(()))
    return tensor.dtype if tensor.is_floating_point() else torch.float32, tensor.device


def _blank(model: nn.Module, size: int | tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One blank input of `size` (a side, or (height, width)) with the channels the model takes."""
    height, width = (size, size) if isinstance(size, int) else size
    return torch.zeros(1, input_channels(model), height, width, dtype=dtype, device=device)


def _model_input(channels: int, mean: _Triple, std: _Triple, dtype: torch.dtype,
                 device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """RGB images in [0, 1] -> the model's input, as auditor.inputs.preprocess.Preprocess makes it: normalised
    RGB; for one channel the ITU-R 601 luma normalised by the first mean and std; for four an opaque alpha."""
    shift = torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1)
    scale = torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1)
    luma = torch.tensor(_LUMA, dtype=dtype, device=device).view(1, 3, 1, 1)
    if channels == 1:
        return lambda rgb: ((rgb * luma).sum(dim=1, keepdim=True) - shift[:, :1]) / scale[:, :1]
    if channels == 4:
        return lambda rgb: torch.cat([(rgb - shift) / scale, torch.ones_like(rgb[:, :1])], dim=1)
    return lambda rgb: (rgb - shift) / scale


def _image_seed(seed: int, channel: int, copy: int) -> int:
    """A seed per image from (seed, channel, copy): an image never depends on its batch-mates."""
    return ((seed * 1_000_003 + channel) * 1_009 + copy) % 2**63


def _channel_means(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B]: the mean over locations of image b's activation in channel targets[b] (the objective)."""
    return output[torch.arange(len(targets), device=output.device), targets].reshape(len(targets), -1).mean(dim=1)


def _gram_similarity(output: torch.Tensor, copies: int) -> torch.Tensor:
    """[C]: summed cosine similarity of the Gram matrices of different copies of each channel, per copy."""
    flat = output.flatten(2) if output.ndim > 2 else output[..., None]
    grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1).view(-1, copies, flat.shape[1] ** 2)
    similarity = grams @ grams.transpose(1, 2)
    return (similarity.sum(dim=(1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(dim=1)) / copies


def _map_size(run: _Run, name: str, blank: torch.Tensor) -> tuple[int, int]:
    """(h, w) of the layer's map for one blank input ((1, 1) for a layer without a map)."""
    with torch.no_grad():
        output = _layer_output(run, name, blank)
    return tuple(output.shape[2:4]) if output.ndim == 4 else (1, 1)


def _layer_output(run: _Run, name: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output for x as channels first where it has a spatial layout, or an AuditorError if it
    has none to work with."""
    output = run(x)
    if not isinstance(output, torch.Tensor):
        raise AuditorError(f"--max-layer: {name!r} does not return a tensor (or never runs); choose another layer")
    return channels_first(output, (x.shape[-2], x.shape[-1]))


def _central_boxes(run: _Run, name: str, size: int, channels: int, dtype: torch.dtype, device: torch.device,
                   generator: torch.Generator) -> tuple[list[tuple[int, int, int, int]] | None, tuple[int, int]]:
    """The input boxes (y0, x0, y1, x1) seen by the central location and its lower-right neighbour, on
    two random inputs of `size` each; None when the layer has no map of at least 2x2 locations."""
    x = torch.randn(4, channels, size, size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    x.requires_grad_(True)
    output = _layer_output(run, name, x)
    if output.ndim != 4 or min(output.shape[2:]) < 2:
        return None, (1, 1)
    row, col = (output.shape[2] - 1) // 2, (output.shape[3] - 1) // 2
    picked = output[:2, :, row, col].sum() + output[2:, :, row + 1, col + 1].sum()
    (grad,) = torch.autograd.grad(picked, [x])
    seen = grad.abs().sum(dim=1).view(2, 2, size, size).amax(dim=1) > 0  # [location, H, W]
    return [_extent(mask) for mask in seen], (output.shape[2], output.shape[3])


def _extent(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), ends exclusive, of the True entries of a 2-D mask."""
    if not mask.any():  # no gradient at all (a dead layer): treat as seeing everything
        return 0, 0, mask.shape[0], mask.shape[1]
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _inside(box: tuple[int, int, int, int], size: int) -> bool:
    """Whether the box stays clear of the input's border (so it was not clipped)."""
    return box[0] > 0 and box[1] > 0 and box[2] < size and box[3] < size
