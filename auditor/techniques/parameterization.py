"""Image parameterisations and random transforms for activation maximisation (after Lucid/lucent).

A parameterisation owns the tensor the optimiser updates and turns it into RGB images in [0, 1];
every image of a batch starts from its own seed, so an image never depends on its batch-mates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Lucid's square root of the ImageNet colour correlation matrix (rows: R, G, B), scaled so that its
# largest column has norm 1: an independent step in this space moves colours the way photos vary.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64)
COLOR_CORRELATION = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
FOURIER_SD = 0.01  # Lucid's initial spectrum scale
FOURIER_MAGIC = 4.0  # Lucid divides the image by 4 after the inverse FFT (less saturated results)
PIXEL_SD = 0.01  # pixel images start as grey plus this much noise


def seeded_normal(seeds: Sequence[int], shape: tuple[int, ...], dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """[len(seeds), *shape] standard normal draws, one torch.Generator per seed (global RNG untouched)."""
    draws = [torch.randn(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in seeds]
    return torch.stack(draws).to(device=device, dtype=dtype)


@dataclass
class PixelImage:
    """The RGB pixels themselves, clipped to [0, 1] after every step (projected gradient ascent)."""

    pixels: torch.Tensor  # [B, 3, H, W], requires grad

    @classmethod
    def create(cls, seeds: Sequence[int], size: int, dtype: torch.dtype, device: torch.device) -> PixelImage:
        noise = seeded_normal(seeds, (3, size, size), dtype, device)
        return cls((0.5 + PIXEL_SD * noise).requires_grad_(True))

    @property
    def parameter(self) -> torch.Tensor:
        return self.pixels

    def rgb(self) -> torch.Tensor:
        return self.pixels

    def constrain(self) -> None:
        with torch.no_grad():
            self.pixels.clamp_(0.0, 1.0)


@dataclass
class FourierImage:
    """Lucid's decorrelated Fourier image: a 1/f-scaled spectrum per colour channel, decorrelated
    colours, and a sigmoid into [0, 1]. Low frequencies get larger steps, so the optimiser finds
    smooth, natural-looking patterns instead of high-frequency noise."""

    spectrum: torch.Tensor  # [B, 3, H, W // 2 + 1, 2] real and imaginary parts, requires grad
    scale: torch.Tensor  # [H, W // 2 + 1, 1], 1 / frequency
    size: int

    @classmethod
    def create(cls, seeds: Sequence[int], size: int, dtype: torch.dtype, device: torch.device) -> FourierImage:
        fy = torch.fft.fftfreq(size, dtype=torch.float64)[:, None]
        fx = torch.fft.rfftfreq(size, dtype=torch.float64)[None, :]
        scale = 1.0 / torch.sqrt(fx * fx + fy * fy).clamp(min=1.0 / size)
        spectrum = FOURIER_SD * seeded_normal(seeds, (3, size, size // 2 + 1, 2), dtype, device)
        return cls(spectrum.requires_grad_(True), scale[..., None].to(device=device, dtype=dtype), size)

    def rgb(self) -> torch.Tensor:
        complex_spectrum = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        image = torch.fft.irfftn(complex_spectrum, s=(self.size, self.size), norm="ortho") / FOURIER_MAGIC
        colors = COLOR_CORRELATION.to(device=image.device, dtype=image.dtype)
        return torch.sigmoid(torch.einsum("bchw,rc->brhw", image, colors))

    def constrain(self) -> None:
        """The sigmoid keeps every value in range: nothing to do."""

    @property
    def parameter(self) -> torch.Tensor:
        return self.spectrum


@dataclass(frozen=True)
class Jitter:
    """Ranges of the random transform drawn each step: shift in pixels, scale factor, rotation in degrees."""

    shift: float = 8.0
    scale: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0


def random_affine(rgb: torch.Tensor, jitter: Jitter, generator: torch.Generator) -> torch.Tensor:
    """Shift, scale and rotate the whole batch by one random draw (one grid_sample, reflected borders).

    Transformation robustness: a pattern must survive small moves to keep activating the channel, so
    the optimiser cannot exploit single-pixel artefacts. One draw per step for the batch keeps each
    image independent of the others (the same seed gives the same image in any batch).
    """
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    size = rgb.shape[-1]
    shift_x, shift_y = ((2 * u[0] - 1) * jitter.shift * 2 / size, (2 * u[1] - 1) * jitter.shift * 2 / size)
    zoom = jitter.scale[0] + u[2] * (jitter.scale[1] - jitter.scale[0])
    angle = math.radians((2 * u[3] - 1) * jitter.degrees)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    theta = torch.tensor([[[cos, -sin, shift_x], [sin, cos, shift_y]]], dtype=rgb.dtype, device=rgb.device)
    grid = F.affine_grid(theta.expand(len(rgb), 2, 3), list(rgb.shape), align_corners=False)
    return F.grid_sample(rgb, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
