"""Tensor helpers that several techniques share: min-max scaling of maps and a separable Gaussian blur."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def minmax(maps: torch.Tensor, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Each map scaled to [0, 1] over `dims`; a constant map (all zero, say) becomes all zero, never NaN."""
    low = maps.amin(dim=tuple(dims), keepdim=True)
    span = maps.amax(dim=tuple(dims), keepdim=True) - low
    return (maps - low) / span.clamp_min(torch.finfo(span.dtype).tiny)


def gaussian_blur(images: torch.Tensor, sigma: float, taps: int, border: str | None = None) -> torch.Tensor:
    """Separable Gaussian filter of [N, C, H, W] with `taps` weights per axis (normalised to sum 1), each
    channel on its own. border None: valid positions only (H - taps + 1 rows); else F.pad's mode for the
    border ("replicate"), and the output keeps the input's size."""
    radius = taps // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=images.device)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = (weights / weights.sum()).to(images.dtype)
    if border is not None:
        images = F.pad(images, (radius, radius, radius, radius), mode=border)
    channels = images.shape[1]
    rows = F.conv2d(images, weights.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(rows, weights.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
