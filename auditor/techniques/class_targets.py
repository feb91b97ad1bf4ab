"""The class targets the CAM and attribution functions take: [N] or [N, K] indices, checked against the scores.

One set of rules and messages for both families; `what` names the caller in the message ("cam", "attribution").
"""

from __future__ import annotations

from typing import Any

import torch

from auditor.errors import AuditorError


def target_columns(targets: torch.Tensor, count: int, what: str) -> torch.Tensor:
    """Class indices as a LongTensor [N, K] for `count` images (a normal tensor, even from inference mode)."""
    given = torch.as_tensor(targets)
    if given.dtype not in (torch.int64, torch.int32) or given.ndim not in (1, 2) or len(given) != count:
        raise AuditorError(f"{what} targets: give class indices as a LongTensor [N] or [N, K] for the {count} "
                           f"images, not {given.dtype} {tuple(given.shape)}")
    with torch.inference_mode(False):
        return (given[:, None] if given.ndim == 1 else given).long().clone()


def check_class_scores(logits: Any, columns: torch.Tensor, what: str) -> None:
    """A clear error unless `logits` are class scores [B, classes] that every index of `columns` names."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise AuditorError(f"--model: {what} needs a model that returns class scores (batch x classes), "
                           f"not {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}")
    if columns.numel() and not 0 <= int(columns.min()) <= int(columns.max()) < logits.shape[1]:
        raise AuditorError(f"{what} targets: class indices must be in 0..{logits.shape[1] - 1}, "
                           f"got {int(columns.min())}..{int(columns.max())}")
