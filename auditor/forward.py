"""The shared forward pass: the model's scores on every image, computed once, gradient-free, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models import imagenet_class_names
from auditor.inputs.models.heads import Head


@dataclass(frozen=True)
class Forward:
    """The model's outputs on every image, on the CPU."""

    logits: torch.Tensor  # N x classes
    probabilities: torch.Tensor  # the head's probabilities of the logits
    top_probabilities: torch.Tensor  # N x k, descending
    top_indices: torch.Tensor  # N x k
    predicted: list[list[int]]  # each image's predicted classes (the head's rule; several when multi-label)
    head: Head

    @classmethod
    def of(cls, logits: torch.Tensor, head: Head, top_k: int) -> Forward:
        probabilities = head.probabilities(logits)
        top = probabilities.topk(min(top_k, logits.shape[1]), dim=1)
        return cls(logits, probabilities, top.values, top.indices, head.predicted(probabilities), head)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    """--precision as the autocast dtype; fp16 on the CPU is refused (bf16 is the CPU's mixed precision:
    fp16 convolutions there are slow and less tested)."""
    if precision not in PRECISIONS:
        raise AuditorError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise AuditorError("--precision fp16 needs a CUDA device; on the CPU use --precision bf16 (or fp32)")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    """torch.autocast for --precision bf16 or fp16 on this device; nothing for fp32."""
    dtype = precision_dtype(precision, device)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in ("out of memory",
                                                                                  "can't allocate memory"))


def forward_pass(module: nn.Module, batches: Iterable[torch.Tensor], spec: str) -> torch.Tensor:
    """`module` on every batch under inference mode: the logits [N, classes], gathered on the CPU.

    `spec` names the model in the one-line errors: a model that returns no batch x classes tensor, or
    that cannot take inputs of this size (then --input-size is what to change).
    """
    outputs = []
    with torch.inference_mode():
        for batch in batches:
            logits = _logits(module, batch, spec)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise AuditorError(
                    f"--model: {spec} must return a tensor of class scores (batch x classes), "
                    f"not {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}"
                )
            outputs.append(logits.float().cpu())  # float32 whatever the precision (autocast gives bf16/fp16)
    return torch.cat(outputs)


def _logits(module: nn.Module, batch: torch.Tensor, spec: str) -> object:
    """The model on one batch; a model that cannot take the inputs is a user error naming --input-size."""
    try:
        return module(batch)
    except (RuntimeError, ValueError, AssertionError) as error:
        if is_out_of_memory(error):
            raise
        first = next(iter(str(error).splitlines()), type(error).__name__)
        shape = "×".join(map(str, batch.shape[1:]))
        if "channels" in first:
            raise AuditorError(f"--channels: {spec} fails on {shape} inputs ({first}); give the number of input "
                               f"channels it takes: 1 (grayscale), 3 (RGB) or 4 (RGBA)") from None
        raise AuditorError(f"--input-size: {spec} fails on {shape} inputs ({first}); give the input size it was "
                           f"built for") from None


def output_class_names(names: Sequence[str], count: int) -> list[str]:
    """A name for each of `count` outputs: the model's own, ImageNet's for a 1000-way model without names,
    else "class i" where a name is missing."""
    if len(names) == count:
        return list(names)
    if not names and count == 1000:
        return imagenet_class_names()
    return [names[i] if i < len(names) else f"class {i}" for i in range(count)]
