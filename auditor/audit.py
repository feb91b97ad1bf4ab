"""run_audit: load, run every selected technique on one shared context, collect a Report."""

from __future__ import annotations

import gc
import logging
import platform
import random
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torchvision

from auditor import __version__, distributed
from auditor.allocator import frozen_heap, reuse_freed_memory
from auditor.config import RunOptions
from auditor.context import AuditContext, resolve_device, resolve_workers
from auditor.document import Figure, Report, Section
from auditor.errors import AuditorError
from auditor.forward import autocast, is_out_of_memory, precision_dtype
from auditor.inputs.images import ImageSet, check_files, load_images
from auditor.inputs.models import LoadedModel, load_model
from auditor.inputs.models.heads import Head
from auditor.methods import METHODS
from auditor.nn.restore import audit_mode
from auditor.option_checks import check_references
from auditor.progress import Progress, as_progress
from auditor.registry import declared_options, discover, select
from auditor.report.maps import maps_record
from auditor.report.svg import check_passive
from auditor.sections.findings import findings

log = logging.getLogger(__name__)
StartCallback = Callable[[str, int, int], None]  # (technique name, index, total): the older progress argument


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_audit(
    model: LoadedModel | None = None,
    images: ImageSet | None = None,
    options: RunOptions | None = None,
    progress: Progress | StartCallback | None = None,
) -> Report | None:
    """Audit `model` (default: the built-in) on `images` (default: the bundled photos).

    A technique that raises becomes a Section carrying its error (unless options.strict), so one
    failure never loses the rest of the report. The model is returned exactly as it was given.
    `progress` (auditor.progress; default: none shown) is told as each technique starts and what it counts.

    Under torchrun (auditor.distributed) every rank computes its shard of the forward pass and rank 0
    runs the techniques and returns the Report; the other ranks compute their share of the spread
    techniques' images and return None. A rank that fails before the merge makes every rank raise
    distributed.RankFailed.
    """
    shown = as_progress(progress)
    options = options or RunOptions()
    reuse_freed_memory()  # a batch's activations reuse freed blocks rather than page-faulted fresh ones
    device = resolve_device(options.device)
    precision_dtype(options.precision, device)  # fp16 on the CPU fails first
    world = distributed.start(device)
    device = distributed.rank_device(device, world.local_rank) if world.open else device
    if not world.main:
        shown = as_progress(None)
    with distributed.guard(world):  # an error on any rank until the merge stops every rank
        available = discover()
        options = options.with_declared(declared_options(available))  # bad values fail first
        techniques = select(available, options.techniques, options.skip)
        started = time.perf_counter()
        when = datetime.now(timezone.utc)
        seed_everything(options.seed)  # first: random weights (--weights none) depend on it too
        if model is None:
            model = load_model(options.model, options.weights, trust_pickle=options.trust_pickle,
                               labels=options.labels, input_size=options.input_size, mean=options.mean,
                               std=options.std, channels=options.channels)
        if images is None:
            workers = resolve_workers(options.workers)
            check = distributed.sharded_check(world, lambda paths: check_files(paths, workers))
            images = load_images(options.images or None, model.preprocess, model.class_names, options.labels_csv,
                                 check=check)
    done: dict[str, Section] = {}
    with ExitStack() as stack:
        stack.callback(shown.close)
        stack.enter_context(frozen_heap())  # the model and libraries: not scanned by each full collection
        with distributed.guard(world):  # the model moved, and each rank's shard of the forward pass
            requires_grad = stack.enter_context(audit_mode(model.module, device))
            ctx = AuditContext(model, images, options, device, requires_grad, progress=shown)
            ctx.forward  # noqa: B018 - the shared forward pass: each rank's shard, merged on every rank
        check_references(options, model.module, model.name, ctx.class_names)  # the same on every rank
        if not world.main:  # its forward shard is merged; it helps with the spread techniques' images only
            for technique in run_order(techniques):
                if getattr(technique, "spreads", False):
                    _run_one(technique, ctx, options)
            distributed.finish(world)
            return None
        label_notes = _label_count_notes(model, ctx.forward.logits.shape[1])
        for index, technique in enumerate(run_order(techniques)):
            shown.close()
            shown.start(technique.name, index, len(techniques))
            done[technique.name] = _run_one(technique, ctx, options)
        shown.close()
        distributed.finish(world)
        layout = "channels-last" if ctx.memory_format == torch.channels_last else "contiguous"
    sections = [done[t.name] for t in techniques]  # shown in registry order, whatever order they ran in
    record = audit_record(model, images, options, device, when, time.perf_counter() - started, sections, layout,
                          ctx.head, scale={"precision": options.precision, "workers": ctx.workers,
                                           "distributed": world.record(), "techniques": ctx.precisions})
    record["model"]["notes"] = [*model.notes, *label_notes]  # a copy: the caller's LoadedModel stays as it was
    return Report(record, sections, findings(record, sections, {key: m.name for key, m in METHODS.items()}))


def _label_count_notes(model: LoadedModel, outputs: int) -> list[str]:
    """A class-name list (--labels, a config) that does not match the outputs: one warning, and the note for
    the record (the LoadedModel, the caller's, is not changed)."""
    names = len(model.class_names)
    if not names or names == outputs:
        return []
    message = (f"the model has {outputs} outputs but {names} class names were given; "
               + ("the last names are not used" if names > outputs else
                  f"outputs {names} to {outputs - 1} are called 'class i'"))
    log.warning("--labels: %s", message)
    return [f"Class names: {message}."]


def run_order(techniques: list[Any]) -> list[Any]:
    """Registry order, except that a technique runs after those it names in `after` (when they run at all).

    A technique that reuses another's results (the trust scores reuse the CAM maps through ctx.shared)
    can so be shown before it in the report and still run after it.
    """
    waiting_for = {t.name for t in techniques}
    ordered: list[Any] = []
    pending = list(techniques)
    while pending:
        ready = next((t for t in pending if not waiting_for & set(getattr(t, "after", ()))), pending[0])  # cycle
        ordered.append(ready)
        pending.remove(ready)
        waiting_for.discard(ready.name)
    return ordered


# Techniques that run no forward or gradient pass of their own, so --precision does not concern them.
NO_AUTOCAST = frozenset({"architecture", "kernels"})


def _attempt(technique: Any, ctx: AuditContext, options: RunOptions) -> Section:
    """The technique's section, its forward and gradient passes under --precision's autocast; a technique
    that fails under autocast (code that assumes float32) runs again in fp32, and its section says so."""
    precision = "fp32" if technique.name in NO_AUTOCAST else options.precision
    try:
        with autocast(ctx.device, precision):
            section = technique().run(ctx, options)
    except Exception as error:
        if precision == "fp32" or is_out_of_memory(error) or isinstance(error, AuditorError):
            raise  # a user error or no memory: the same in fp32
        with autocast(ctx.device, "fp32"):
            section = technique().run(ctx, options)
        section.notes.append(f"This technique does not run under --precision {precision} "
                             f"({distributed.one_line(error)}), so it ran in fp32.")
        precision = "fp32"
    ctx.precisions[technique.name] = precision
    for block in section.blocks:
        if isinstance(block, Figure) and block.mime == "image/svg+xml":
            check_passive(block.data.decode("utf-8"), block.key)
    return section


def _with_half_batch(technique: Any, ctx: AuditContext, options: RunOptions) -> Section:
    """The technique once more with half the batch, after it ran out of memory; the section says so."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    smaller = ctx.with_batch_size(options.batch_size // 2)
    section = _attempt(technique, smaller, smaller.options)
    section.notes.append(f"This technique ran out of memory with --batch-size {options.batch_size} and was run "
                         f"again with {smaller.options.batch_size}.")
    return section


def _run_one(technique: Any, ctx: AuditContext, options: RunOptions) -> Section:
    """The technique's section; on running out of memory, one retry with half the batch; else its error."""
    start = time.perf_counter()
    try:
        try:
            section = _attempt(technique, ctx, options)
        except Exception as error:
            if not is_out_of_memory(error) or options.batch_size < 2:
                raise
            section = _with_half_batch(technique, ctx, options)
    except Exception as error:
        if options.strict:
            raise
        section = Section(
            technique.name,
            technique.title,
            error=f"{type(error).__name__}: {error}".splitlines()[0],
            error_detail=traceback.format_exc(),
        )
    section.seconds = time.perf_counter() - start
    return section


def audit_record(
    model: LoadedModel,
    images: ImageSet,
    options: RunOptions,
    device: torch.device,
    when: datetime,
    seconds: float,
    sections: list[Section],
    layout: str = "contiguous",
    head: Head | None = None,
    scale: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a reviewer needs to reproduce the audit: model, data hashes, versions, device, input layout
    (AuditContext.memory_format: it changes float rounding), options; `scale`: the precision, the
    decoding workers and the torchrun world (size, backend, each rank's shard of the forward pass)."""
    scale = scale or {"precision": options.precision, "workers": options.workers,
                      "distributed": distributed.SINGLE.record()}
    parameters = model.parameter_count
    return {
        "auditor_version": __version__,
        "created": when.isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "model": {
            "name": model.name,
            "spec": model.spec,
            "kind": model.kind,
            "weights": model.weights,
            "parameters": parameters,
            "state_dict_sha256": model.sha256,
            "files_sha256": model.file_sha256,
            "preprocess": model.preprocess.describe(),
            "input_size": [model.preprocess.channels, *model.preprocess.crop_size],
            "classes": len(model.class_names) or None,
            "head": None if head is None else {"kind": head.kind, "rule": head.describe(), "reason": head.reason},
            "output": model.output,
            "checkpoint": model.checkpoint,
            "preprocess_source": model.preprocess_source,
            "notes": model.notes,
        },
        "images": {
            "count": len(images),
            "files": [
                {"name": n, "sha256": h, "label": label}
                for n, h, label in zip(images.names, images.sha256, images.label_names)
            ],
            "skipped": [{"name": n, "reason": r} for n, r in images.skipped],
            "gallery": None if images.gallery is None else {  # None when no technique showed images
                "shown": [images.names[i] for i in images.gallery.indices],
                "rule": images.gallery.rule,
            },
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "platform": platform.platform(terse=True),
            "device": _describe_device(device),
            "input_layout": layout,
            "precision": scale["precision"],
            "workers": scale["workers"],
            "distributed": scale["distributed"],
        },
        "seed": options.seed,
        "command": options.command_line(),
        "options": options.as_record(),
        "techniques": [
            {"name": s.technique, "seconds": round(s.seconds, 3), "status": "failed" if s.error else "ok",
             "precision": scale.get("techniques", {}).get(s.technique, scale["precision"])}
            for s in sections
        ],
        "maps": maps_record(sections),  # maps.safetensors: file, sha256, keys (None when nothing was kept)
    }


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.processor() or platform.machine()})"
