"""AuditContext: what every technique receives: the model, the images, the options and the shared results.

It batches the images onto the device in the layout the model runs fastest in; the shared forward pass
(auditor.forward), the gallery rule (ImageSet.choose_gallery) and the layout probe
(auditor.nn.memory_format) live in their own modules, and are computed here once, when first asked.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from PIL import Image

from auditor import distributed
from auditor.config import RunOptions
from auditor.errors import AuditorError
from auditor.forward import Forward, autocast, forward_pass, output_class_names
from auditor.inputs.images import Gallery, ImageSet, on_white
from auditor.inputs.models import LoadedModel
from auditor.inputs.models.heads import Head, choose_head
from auditor.nn.memory_format import preferred_layout
from auditor.progress import NO_PROGRESS, Progress
from auditor.shared import SharedResults


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


def default_workers(processes: int = 1) -> int:
    """--workers by default: min(4, the CPUs each of this machine's `processes` (torchrun ranks) has, less
    the one it runs the model on); 0 (decoding in the main process) with one CPU or fewer."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(4, cpus // max(1, processes) - 1))


def resolve_workers(workers: int | None) -> int:
    """--workers as given, or default_workers for this machine's ranks."""
    return default_workers(distributed.current().local_size) if workers is None else workers


class AuditContext:
    """What every technique receives. The model is in eval mode on `device` while techniques run.

    - `module`, `model` (LoadedModel: preprocess, class names, hashes), `images` (ImageSet), `device`;
    - `options` (RunOptions; a technique reads its own with `options.of(technique)`);
    - `batches()` and `inputs(indices)`: input batches on the device, `--batch-size` at a time;
    - `forward` (Forward: logits, probabilities, top-k of every image), `class_names`, `gallery`;
    - `requires_grad`: the user's own requires_grad flags, by parameter name;
    - `shared`: results a technique publishes for those that run after it (see `after` in the registry);
    - `progress` (auditor.progress): `ctx.progress(total, unit)` gives an advance(n=1) for a long loop, or
      `ctx.progress.each(items, unit)` wraps one; shown as a bar on a terminal, nothing elsewhere.
    """

    def __init__(self, model: LoadedModel, images: ImageSet, options: RunOptions, device: torch.device,
                 requires_grad: Mapping[str, bool], progress: Progress = NO_PROGRESS) -> None:
        self.model = model
        self.images = images
        self.options = options
        self.device = device
        self.requires_grad = dict(requires_grad)  # the user's flags by parameter name, before the audit froze them
        self.progress = progress  # what the long loops report as they go (auditor.progress)
        self.shared = SharedResults()  # typed results a technique publishes for later ones (auditor.shared)
        self.precisions: dict[str, str] = {}  # the precision each technique ran in (--precision, or fp32)
        images.gallery = None  # chosen anew for this audit, once its predictions are known

    def with_batch_size(self, batch_size: int) -> AuditContext:
        """This context with another --batch-size (a retry after running out of memory): the forward pass,
        gallery, layout and shared results computed so far are the same objects, not recomputed."""
        smaller = copy.copy(self)
        smaller.options = self.options.replace(batch_size=batch_size)
        return smaller

    @property
    def module(self) -> torch.nn.Module:
        return self.model.module

    def batches(self, indices: Sequence[int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(first index, input batch on the device), `--batch-size` at a time, of all images (or of
        `indices`, in their order), decoded as needed: in --workers DataLoader processes, or here with 0.

        Only a batch (a few with workers) is in memory at once, whatever the number of images; the batches
        hold the same images, and the same tensors, whatever the number of workers.
        """
        size = max(1, self.options.batch_size)
        order = list(range(len(self.images))) if indices is None else list(indices)
        groups = [order[start:start + size] for start in range(0, len(order), size)]
        pinned = self.device.type == "cuda" and self.workers > 0
        for chosen, batch in zip(groups, self.images.input_batches(groups, self.workers, pinned)):
            yield chosen[0], self._on_device(batch, non_blocking=pinned)

    @cached_property
    def workers(self) -> int:
        """Decoding processes of a pass over the images (--workers, or default_workers)."""
        return resolve_workers(self.options.workers)

    def inputs(self, indices: list[int]) -> torch.Tensor:
        """The model inputs of these images, as one batch on the device."""
        return self._on_device(self.images.inputs(indices))

    def _on_device(self, batch: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        return batch.to(self.device, non_blocking=non_blocking).contiguous(memory_format=self.memory_format)

    @cached_property
    def memory_format(self) -> torch.memory_format:
        """The layout inputs are given in (auditor.nn.memory_format.preferred_layout, probed once on a random
        input); the usual one for a model without convolutions, where the layout cannot matter."""
        if not any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in self.module.modules()):
            return torch.contiguous_format
        preprocess = self.model.preprocess
        dtype = next((p.dtype for p in self.module.parameters() if p.is_floating_point()), torch.float32)
        probe = torch.randn(1, preprocess.channels, *preprocess.crop_size, generator=torch.Generator().manual_seed(0),
                            dtype=dtype)
        return preferred_layout(self.module, probe.to(self.device))

    def photo(self, index: int, size: int | None = None) -> Image.Image:
        """Image `index` as the model saw it (crop, before normalisation, an alpha channel composited on white),
        resized to size × size if given."""
        image = self.images.photo(index)
        if image.mode == "RGBA":
            image = on_white(image)
        return image if size is None else image.resize((size, size), Image.Resampling.BICUBIC)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the report: one process, or rank 0 of a torchrun group."""
        return distributed.current().main

    def spread(self, count: int, compute: Callable[[int], Any]) -> list[Any]:
        """[compute(0), ..., compute(count - 1)], one image each, split over torchrun's ranks and gathered
        to every rank (auditor.distributed.spread); in one process, the same calls in turn."""
        return distributed.spread(distributed.current(), count, compute)

    def spread_batches(self, count: int, compute: Callable[[slice], Any]) -> list[Any]:
        """[compute(rows) for each --batch-size block of rows 0 .. count - 1], the blocks spread over torchrun's
        ranks as in `spread`: a block, not an image, is then the unit of work, run as one batch (on the CPU,
        three images together cost two thirds of three alone), and still the same in one process."""
        size = self.options.batch_size
        blocks = [slice(start, min(start + size, count)) for start in range(0, count, size)]
        return self.spread(len(blocks), lambda j: compute(blocks[j]))

    def image_rows(self, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """torch.cat of compute(batch) over every --batch-size batch of all the images, on the CPU. Under
        torchrun each rank computes its shard of whole batches, as in the forward pass, and the rows are
        gathered in image order to every rank: the same numbers as one process."""
        world = distributed.current()
        mine = distributed.shard(len(self.images), self.options.batch_size, world) if world.open \
            else range(len(self.images))
        with distributed.guard(world):
            parts = [compute(batch).cpu() for _, batch in self.batches(mine)] if len(mine) else []
        part = torch.cat(parts) if parts else None
        return distributed.gather_rows(world, part) if world.open else part

    def share_from_main(self) -> None:
        """Rank 0's `shared` results on every rank, before a spread technique reuses them (the sections
        that published them ran on rank 0 only)."""
        self.shared = distributed.broadcast(distributed.current(), self.shared)

    @cached_property
    def forward(self) -> Forward:
        """One batched, gradient-free forward pass over all images (under --precision's autocast), computed
        once and shared. Under torchrun each rank runs its shard (auditor.distributed.shard) and the
        logits are gathered, in image order, to every rank: the same numbers as one process."""
        world = distributed.current()
        if not world.open:
            logits = self._logits(range(len(self.images)))
        else:
            mine = distributed.shard(len(self.images), self.options.batch_size, world)
            distributed.fail_hook(world)
            logits = distributed.gather_rows(world, self._logits(mine) if len(mine) else None)
        head = choose_head(self.options.head, logits.shape[1], binary=self.model.binary,
                           multi_label=self.model.multi_label, threshold=self.options.threshold)
        return Forward.of(logits, head, self.options.top_k)

    def _logits(self, indices: Sequence[int]) -> torch.Tensor:
        """The model's logits [len(indices), classes] (float32, on the CPU), a batch at a time."""
        batches = self.progress.each((batch for _, batch in self.batches(indices)), "images", len(indices), len)
        with autocast(self.device, self.options.precision):
            return forward_pass(self.module, batches, self.model.spec)

    @property
    def head(self) -> Head:
        """How scores become probabilities (softmax, sigmoid or binary): every technique uses this one."""
        return self.forward.head

    @cached_property
    def gallery(self) -> Gallery:
        """At most `--gallery-images` images for galleries, chosen by ImageSet.choose_gallery's stated rule."""
        return self.images.choose_gallery(self.forward.top_probabilities[:, 0].tolist(), self.forward.predicted,
                                          self.options.gallery_images)

    def gallery_indices(self) -> list[int]:
        """The images a gallery shows, in the gallery's order (every number still counts all images)."""
        return list(self.gallery.indices)

    @cached_property
    def class_names(self) -> list[str]:
        """A name for every output (see auditor.forward.output_class_names)."""
        return output_class_names(self.model.class_names, self.forward.logits.shape[1])
