"""Optional export of the model graph to a TensorBoard event file (needs the tensorboard extra)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from auditor.errors import AuditorError


def require_tensorboard() -> type:
    """torch's SummaryWriter, or a one-line AuditorError saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise AuditorError("--tensorboard needs TensorBoard: pip install 'auditor[tensorboard]'") from None
    return SummaryWriter


def write_graph(module: nn.Module, example: torch.Tensor, log_dir: str | Path) -> str | None:
    """Write `module`'s graph (traced by torch.jit on `example`) under `log_dir`; a note if tracing fails."""
    summary_writer = require_tensorboard()
    writer = summary_writer(log_dir=str(log_dir))
    try:
        with warnings.catch_warnings():  # torch deprecates jit.trace, which add_graph uses: not the user's concern
            warnings.simplefilter("ignore", FutureWarning)
            writer.add_graph(module, example)
    except Exception as error:  # torch.jit.trace raises many types for models it cannot trace
        return f"The TensorBoard graph was not written: torch.jit could not trace the model ({type(error).__name__})."
    finally:
        writer.close()
    return None
