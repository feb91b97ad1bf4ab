"""How alike two saliency maps are: Spearman rank correlation, and the IoU of their top 20% (numpy only).

Both are 1 for identical maps and do not change when a map is scaled or shifted.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

TOP_FRACTION = 0.2


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties given their average rank (as scipy.stats.rankdata, minus one)."""
    _, inverse, counts = np.unique(values.ravel(), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse.ravel()]


def same_grid(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps on the finer of their two grids (bilinear), when they differ (another target layer)."""
    if a.shape == b.shape:
        return a, b
    shape = max(a.shape, b.shape, key=lambda s: s[0] * s[1])

    def resized(m: np.ndarray) -> np.ndarray:
        if m.shape == shape:
            return m
        return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((shape[1], shape[0]),
                                                                               Image.Resampling.BILINEAR))
    return resized(a), resized(b)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two maps (1 when equal; None when one is constant and they differ)."""
    a, b = same_grid(np.asarray(a, np.float64), np.asarray(b, np.float64))
    if np.array_equal(a, b):
        return 1.0
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return None if scale == 0 else float((ra * rb).sum() / scale)


def top_mask(m: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """The `fraction` of pixels with the highest values (at least one; ties broken by position)."""
    flat = m.ravel()
    count = max(1, math.ceil(fraction * flat.size))
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argsort(-flat, kind="stable")[:count]] = True
    return mask.reshape(m.shape)


def top_iou(a: np.ndarray, b: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Intersection over union of the two maps' top `fraction` of pixels (1 when equal)."""
    a, b = same_grid(np.asarray(a, np.float64), np.asarray(b, np.float64))
    if np.array_equal(a, b):
        return 1.0
    ma, mb = top_mask(a, fraction), top_mask(b, fraction)
    return float((ma & mb).sum() / (ma | mb).sum())
