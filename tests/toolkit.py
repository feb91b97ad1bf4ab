"""The tests' toolkit: one snapshot of "the model exactly as given" and one audit harness.

- `snapshot(model)` / `assert_unchanged(model, before)`: every parameter and buffer (the same tensor
  objects, the same values), every `.grad`, every module's training mode, `inplace` flag, instance
  attributes and hooks (forward, forward pre-, backward and backward pre-), every requires_grad, and
  the global grad, inference and TorchFunctionMode state.
- `audit(model, techniques, size=..., images=..., **options)`: a run as `auditor run` makes it, on the
  CPU; `audit_section` for the one section of a one-technique run; `audit(..., **CHEAP)` for a run that
  every technique makes quick (two gallery images, few steps).

The tiny models (TinyNet, a tiny ViT and a tiny Swin) are in tests/fixtures_models.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditor import ImageSet, LoadedModel, Report, RunOptions, load_images, load_model, run_audit
from auditor.document import Section

_RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunOptions))

# Two gallery images and every technique's cheapest useful settings: for audits that check what a run
# leaves behind, not what it finds.
CHEAP = {"gallery_images": 2, "max_steps": 3, "max_size": 32, "trust_steps": 2, "trust_images": 1,
         "feature_channels": 4, "recon_channels": 1, "cam_top_k": 2, "kernel_count": 8, "attribution_images": 1,
         "ig_steps": 2, "smoothgrad_samples": 2, "rise_masks": 8, "trust_costly_steps": 1}


@dataclass
class ModelState:
    """What a technique must leave as it found it (see `snapshot`)."""

    modules: dict[str, tuple[Any, ...]]  # name -> (type, training, inplace, attribute names, four hook dicts)
    requires_grad: dict[str, bool]
    grads: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]  # name -> (the .grad object, its values)
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor | None]]  # state_dict name -> (the object, its values)
    modes: dict[str, bool]  # the global grad, inference and TorchFunctionMode state


def _hooks(module: nn.Module) -> tuple[dict[int, Any], ...]:
    return tuple(dict(getattr(module, name, {})) for name in
                 ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _modes() -> dict[str, bool]:
    return {"grad enabled": torch.is_grad_enabled(), "inference mode": torch.is_inference_mode_enabled(),
            "TorchFunctionMode active": torch._C._is_torch_function_mode_enabled()}


def snapshot(model: nn.Module, *, values: bool = True) -> ModelState:
    """The model's state now. `values=False` keeps the tensor objects but copies no values (for models
    too large to copy; check their values another way, e.g. with state_dict_sha256)."""
    def copy(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return tensor.detach().clone() if values and tensor is not None else None

    return ModelState(
        modules={name: (type(m), m.training, getattr(m, "inplace", None), sorted(vars(m)), *_hooks(m))
                 for name, m in model.named_modules()},
        requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
        grads={name: (p.grad, copy(p.grad)) for name, p in model.named_parameters()},
        tensors={name: (t, copy(t)) for name, t in model.state_dict(keep_vars=True).items()},
        modes=_modes(),
    )


def _same_values(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is None or b is None or torch.equal(a, b)


def assert_unchanged(model: nn.Module, before: ModelState) -> None:
    """The model (and the global modes) exactly as `before`: each difference is named."""
    after = snapshot(model, values=False)  # the live tensors, compared with the copies in `before`
    assert after.modules.keys() == before.modules.keys(), "modules added, removed or renamed"
    fields = ("type", "training mode", "inplace", "instance attributes", "forward hooks", "forward pre-hooks",
              "backward hooks", "backward pre-hooks")
    for name, state in before.modules.items():
        for field, was, now in zip(fields, state, after.modules[name], strict=True):
            assert now == was, f"{name or 'the model'}: {field} {was!r} became {now!r}"
    assert after.requires_grad == before.requires_grad, "requires_grad changed"
    for name, (grad, grad_values) in before.grads.items():
        assert after.grads[name][0] is grad and _same_values(grad, grad_values), f"{name}.grad"
    assert after.tensors.keys() == before.tensors.keys(), "parameters or buffers added or removed"
    for name, (tensor, tensor_values) in before.tensors.items():
        assert after.tensors[name][0] is tensor, f"{name} was replaced by another tensor"
        assert _same_values(tensor, tensor_values), f"{name} changed"
    assert after.modes == before.modes, "a global torch mode was left changed"


def audit(model: nn.Module | LoadedModel, techniques: str | Sequence[str] = (), *, size: int | None = 32,
          images: ImageSet | str | Path | Sequence[str | Path] | None = None, **options: Any) -> Report:
    """Audit `model` with `techniques` (one name, several, or () for all) as `auditor run` would.

    `model`: a module, loaded with input size `size` (None: load_model's default), or a LoadedModel as
    it is. `images`: None for the bundled photos, paths (labels from folder names), or an ImageSet.
    `options`: RunOptions fields by name (seed=, batch_size=, gallery_images=, ...); any other name is
    a technique setting (max_steps=3). On the CPU unless given; the rest as `auditor run` has it.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, input_size=size)
    if not isinstance(images, ImageSet):
        images = load_images(images, loaded.preprocess, loaded.class_names)
    settings = {**options.pop("settings", {}), **{k: v for k, v in options.items() if k not in _RUN_FIELDS}}
    run = {"device": "cpu"} | {k: v for k, v in options.items() if k in _RUN_FIELDS}
    names = (techniques,) if isinstance(techniques, str) else tuple(techniques)
    return run_audit(loaded, images, RunOptions(techniques=names, settings=settings, **run))


def audit_section(model: nn.Module | LoadedModel, technique: str, **kwargs: Any) -> Section:
    """The one section of `audit(model, technique, ...)`."""
    (section,) = audit(model, technique, **kwargs).sections
    return section
