"""How alike two saliency maps are: by rank order (Spearman) and by local structure (SSIM).

The randomisation test (Adebayo et al. 2018) compares each method's maps before and after with both.
"""

from __future__ import annotations

import torch

from auditor.errors import AuditorError
from auditor.techniques.tensor_ops import gaussian_blur

__all__ = ["SSIM_WINDOW", "spearman", "ssim"]

SSIM_WINDOW = 11  # skimage's Gaussian window for sigma 1.5, truncate 3.5: radius int(3.5 * 1.5 + 0.5) = 5
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def spearman(a: torch.Tensor, b: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps [..., H, W] -> [...] (float32), ties at average rank.

    Ranks, not values, because saliency methods differ in scale and contrast but agree (or not) on
    which pixels matter most. A constant map has no ranking; it scores 0 (no agreement) rather than
    NaN, so curves and report.json stay finite.

    With `index` [P] (integer), many pairs at once: `a` holds references [M, ..., H, W], each ranked once,
    `b` maps [P, ..., H, W], and pair p is (a[index[p]], b[p]); the result is [P, ...], the numbers of
    spearman(a[index], b).
    """
    ra, rb = _centred_ranks(a, b, index)
    denominator = (ra.square().sum(dim=-1) * rb.square().sum(dim=-1)).sqrt()
    rho = (ra * rb).sum(dim=-1) / denominator.clamp_min(torch.finfo(torch.float64).tiny)
    return rho.where(denominator > 0, torch.zeros_like(rho)).float().reshape(b.shape[:-2])


def _centred_ranks(a: torch.Tensor, b: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ranks minus their mean, [pairs, H * W] float64, of a's maps (gathered by `index`) and b's."""
    _check_pairs(a, b, index)
    ra = _average_ranks(a.reshape(-1, a.shape[-2] * a.shape[-1]))
    rb = _average_ranks(b.reshape(-1, b.shape[-2] * b.shape[-1]))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    if index is not None:
        ra = ra.view(a.shape[0], -1, ra.shape[-1])[index.to(ra.device).long()].reshape(rb.shape)
    return ra, rb


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks [M, n] (float64) of each row, tied values sharing the mean of their positions.

    A run of ties spans positions first .. last of the sorted row: first is the running maximum of the
    runs' start positions, last the running minimum, from the right, of their end positions (two scans, no
    scatter). Ties get the mean whatever order the sort leaves them in, so the sort need not be stable."""
    rows, n = values.shape
    ordered, order = values.sort(dim=1)
    positions = torch.arange(1, n + 1, device=values.device, dtype=torch.int32).expand(rows, n)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, positions, 0).cummax(dim=1).values
    last = torch.where(ends, positions, n + 1).flip(1).cummin(dim=1).values.flip(1)
    sorted_ranks = (first + last).double() / 2
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, index: torch.Tensor | None = None) -> torch.Tensor:
    """Mean SSIM of each pair of maps [..., H, W] -> [...] (Wang et al. 2004), as skimage computes it.

    Gaussian window 11 x 11 (sigma 1.5), K1 = 0.01, K2 = 0.03, population covariance, and the mean over
    the positions whose window lies inside the map (skimage filters the whole map with reflected
    borders, then crops 5 pixels, so a valid convolution gives the same numbers). SSIM complements
    Spearman: it compares local structure and contrast, not just the order of pixels.

    With `index` [P], many pairs at once as in `spearman`: pair p is (a[index[p]], b[p]), each reference's
    own local means blurred once; the result is [P, ...].
    """
    _check_pairs(a, b, index)
    height, width = a.shape[-2:]
    if min(height, width) < SSIM_WINDOW:
        raise AuditorError(f"SSIM needs maps of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, not {height}x{width}; "
                           "use a larger --input-size")
    x = a.reshape(-1, 1, height, width).float()
    y = b.reshape(-1, 1, height, width).float()
    if index is None:
        blurred = gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), _SSIM_SIGMA, SSIM_WINDOW)
        ux, uy, uxx, uyy, uxy = blurred.unbind(dim=1)
    else:
        rows = index.to(x.device).long()
        per = x.shape[0] // a.shape[0]  # maps per pair: the dimensions after the first
        references = gaussian_blur(torch.cat([x, x * x], dim=1), _SSIM_SIGMA, SSIM_WINDOW)
        references = references.view(a.shape[0], per, 2, *references.shape[-2:])[rows].reshape(-1, 2,
                                                                                            *references.shape[-2:])
        x = x.view(a.shape[0], per, 1, height, width)[rows].reshape(-1, 1, height, width)
        own = gaussian_blur(torch.cat([y, y * y, x * y], dim=1), _SSIM_SIGMA, SSIM_WINDOW)
        (ux, uxx), (uy, uyy, uxy) = references.unbind(dim=1), own.unbind(dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(-2, -1)).reshape(b.shape[:-2])


def _check_pairs(a: torch.Tensor, b: torch.Tensor, index: torch.Tensor | None) -> None:
    if index is None:
        if a.shape != b.shape or a.ndim < 2:
            raise ValueError(f"maps must have one shape [..., H, W], not {tuple(a.shape)} and {tuple(b.shape)}")
        return
    if (index.ndim != 1 or a.ndim < 3 or a.shape[1:] != b.shape[1:] or b.shape[0] != index.shape[0]
            or (len(index) and (int(index.min()) < 0 or int(index.max()) >= a.shape[0]))):
        raise ValueError(f"pairs: need references [M, ..., H, W], maps [P, ..., H, W] and index [P] in 0 .. M-1, "
                         f"not {tuple(a.shape)}, {tuple(b.shape)} and {tuple(index.shape)}")
