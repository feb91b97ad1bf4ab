"""AuditContext: the model, the images, the options, and one forward pass shared by every technique."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from PIL import Image

from auditor.config import RunOptions
from auditor.errors import AuditorError
from auditor.inputs.images import Gallery, ImageSet, choose_gallery
from auditor.inputs.models import LoadedModel, imagenet_class_names
from auditor.nn.memory_format import preferred_layout


@dataclass(frozen=True)
class Forward:
    """The model's outputs on every image, on the CPU."""

    logits: torch.Tensor  # N x classes
    probabilities: torch.Tensor  # softmax of logits
    top_probabilities: torch.Tensor  # N x k, descending
    top_indices: torch.Tensor  # N x k


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in ("out of memory",
                                                                                  "can't allocate memory"))


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for a device that is not there is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AuditorError(f"--device: {name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AuditorError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return device


class AuditContext:
    """What every technique receives. The model is in eval mode on `device` while techniques run."""

    def __init__(self, model: LoadedModel, images: ImageSet, options: RunOptions, device: torch.device,
                 requires_grad: Mapping[str, bool]) -> None:
        self.model = model
        self.images = images
        self.options = options
        self.device = device
        self.requires_grad = dict(requires_grad)  # the user's flags by parameter name, before the audit froze them
        self.shared: dict[str, Any] = {}  # results a technique publishes for later ones (see `after` in registry)
        images.gallery = None  # chosen anew for this audit, once its predictions are known

    @property
    def module(self) -> torch.nn.Module:
        return self.model.module

    def batches(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(start index, input batch on the device), `--batch-size` at a time, each decoded as it is needed.

        Only one batch is in memory at once, whatever the number of images.
        """
        size = max(1, self.options.batch_size)
        for start in range(0, len(self.images), size):
            chosen = range(start, min(start + size, len(self.images)))
            yield start, self._on_device(self.images.inputs(chosen, keep=False))

    def inputs(self, indices: list[int]) -> torch.Tensor:
        """The model inputs of these images, as one batch on the device."""
        return self._on_device(self.images.inputs(indices))

    def _on_device(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device).contiguous(memory_format=self.memory_format)

    @cached_property
    def memory_format(self) -> torch.memory_format:
        """The layout inputs are given in (auditor.nn.memory_format.preferred_layout, probed once on a random input);
        the usual one for a model without convolutions, where the layout cannot matter."""
        if not any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.module.modules()):
            return torch.contiguous_format
        crop = self.model.preprocess.crop
        dtype = next((p.dtype for p in self.module.parameters() if p.is_floating_point()), torch.float32)
        probe = torch.randn(1, 3, crop, crop, generator=torch.Generator().manual_seed(0), dtype=dtype)
        return preferred_layout(self.module, probe.to(self.device))

    def photo(self, index: int, size: int | None = None) -> Image.Image:
        """Image `index` as the model saw it (crop, before normalisation), resized to size × size if given."""
        image = self.images.photo(index)
        return image if size is None else image.resize((size, size), Image.Resampling.BICUBIC)

    @cached_property
    def gallery(self) -> Gallery:
        """At most `--gallery-images` images for galleries, chosen by the rule it states (see choose_gallery).

        Also kept on the ImageSet, where the audit record finds it.
        """
        top = self.forward.top_indices[:, 0].tolist()
        correct = [None if label is None else top[i] == label for i, label in enumerate(self.images.labels)]
        gallery = choose_gallery(self.forward.top_probabilities[:, 0].tolist(), correct, self.options.gallery_images)
        self.images.gallery = gallery
        return gallery

    def gallery_indices(self) -> list[int]:
        """The images a gallery shows, in the gallery's order (every number still counts all images)."""
        return list(self.gallery.indices)

    @cached_property
    def forward(self) -> Forward:
        """One batched, gradient-free forward pass over all images, computed once and shared."""
        outputs = []
        with torch.inference_mode():
            for _, batch in self.batches():
                logits = self._logits(batch)
                if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                    raise AuditorError(
                        f"--model: {self.model.spec} must return a tensor of class scores (batch x classes), "
                        f"not {type(logits).__name__} {tuple(getattr(logits, 'shape', ()))}"
                    )
                outputs.append(logits.float().cpu())
        logits = torch.cat(outputs)
        probabilities = logits.softmax(dim=1)
        k = min(self.options.top_k, logits.shape[1])
        top = probabilities.topk(k, dim=1)
        return Forward(logits, probabilities, top.values, top.indices)

    def _logits(self, batch: torch.Tensor) -> object:
        """The model on one batch; a model that cannot take the inputs is a user error naming --input-size."""
        try:
            return self.module(batch)
        except (RuntimeError, ValueError, AssertionError) as error:
            if is_out_of_memory(error):
                raise
            first = next(iter(str(error).splitlines()), type(error).__name__)
            raise AuditorError(
                f"--input-size: {self.model.spec} fails on {'×'.join(map(str, batch.shape[1:]))} inputs ({first}); "
                f"give the input size it was built for") from None

    @cached_property
    def class_names(self) -> list[str]:
        """Names for every output: the model's, ImageNet's for a 1000-way model, else "class i"."""
        count = self.forward.logits.shape[1]
        names = self.model.class_names
        if len(names) == count:
            return list(names)
        if not names and count == 1000:
            return imagenet_class_names()
        return [names[i] if i < len(names) else f"class {i}" for i in range(count)]
