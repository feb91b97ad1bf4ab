"""The memory layout to feed a network: channels-last where it computes the same output that way.

oneDNN's CPU convolutions run 1.2-2.4x faster on channels-last input (bench/bench_layout.py), and every
tensor built from such an input keeps the layout. A network that reads its activations as flat memory
fails or silently differs on it, so one probe input decides, comparing both layouts' outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def outputs_agree(output: Any, reference: torch.Tensor) -> bool:
    """Equal within 1% of the largest value: room for float rounding (TF32 convolutions, CUDA's default,
    and half precision), far less than a real difference changes (a wrong BatchNorm fold, a layout bug)."""
    if not isinstance(output, torch.Tensor) or output.shape != reference.shape:
        return False
    return bool((output - reference).abs().max() <= 1e-2 * reference.abs().max() + 1e-6)


def preferred_layout(run: Callable[[torch.Tensor], Any], probe: torch.Tensor) -> torch.memory_format:
    """channels_last when `probe` is on the CPU and run() gives the same tensor for it in both layouts,
    else the usual layout. CUDA keeps the usual layout: the gain there has not been measured."""
    if probe.device.type != "cpu":
        return torch.contiguous_format
    try:
        with torch.no_grad():
            usual = run(probe)
            last = run(probe.contiguous(memory_format=torch.channels_last))
    except Exception:  # noqa: BLE001 - any failure is the caller's to report, in the usual layout
        return torch.contiguous_format
    return torch.channels_last if isinstance(usual, torch.Tensor) and outputs_agree(last, usual) \
        else torch.contiguous_format
