"""torchvision classification architectures: their own weights by name, or a state dict file (fine-tuned
heads rebuilt with the file's class count)."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import torch
import torchvision

from auditor.errors import AuditorError
from auditor.inputs.models.checkpoints import (
    factory_hint,
    fit_architecture,
    record_rebuild,
    weights_description,
)
from auditor.inputs.models.loaded import RANDOM_WEIGHTS, LoadedModel
from auditor.inputs.preprocess import Preprocess

# Parts a checkpoint may leave out, by architecture: the builder's argument and the key prefixes it adds.
_OPTIONAL = {
    "inception_v3": {"aux_logits": ("AuxLogits.",)},
    "googlenet": {"aux_logits": ("aux1.", "aux2.")},
}


def names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def load_torchvision(name: str, weights: str | None) -> LoadedModel:
    enum = torchvision.models.get_model_weights(name)
    known = enum.DEFAULT
    choice = "DEFAULT" if weights is None else weights
    fitted = None
    if choice.lower() == "none":
        module = torchvision.models.get_model(name, weights=None)
        description = RANDOM_WEIGHTS
    elif Path(choice).is_file():
        module, fitted = _from_file(name, choice)
        description = weights_description(fitted[0])
    else:
        by_name = {w.name.upper(): w for w in enum}
        known = enum.DEFAULT if choice.upper() == "DEFAULT" else by_name.get(choice.upper())
        if known is None and looks_like_path(choice):
            raise AuditorError(f"--weights: file {choice} does not exist")
        if known is None:
            raise AuditorError(
                f"--weights: {name} has no weights {choice!r}; choose DEFAULT, none, "
                f"{', '.join(w.name for w in enum)}, or a state_dict file"
            )
        module = torchvision.models.get_model(name, weights=None)
        module.load_state_dict(_fetch_torchvision_weights(name, known))
        description = f"torchvision {type(known).__name__}.{known.name}"
    transforms = known.transforms()
    preprocess = Preprocess(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation=transforms.interpolation.value,
    )
    module.eval()
    loaded = LoadedModel(module, preprocess, list(known.meta["categories"]), name, name, "torchvision", description,
                         preprocess_source=f"torchvision {type(known).__name__}.{known.name} transforms")
    if fitted is not None:
        record_rebuild(loaded, fitted)
    return loaded


def _from_file(name: str, weights: str) -> tuple[torch.nn.Module, tuple[Any, dict[str, Any], list[str]]]:
    def build(**args: Any) -> torch.nn.Module:
        if name in ("inception_v3", "googlenet"):
            args.setdefault("init_weights", False)  # the file's weights replace them: no slow init, no FutureWarning
        return torchvision.models.get_model(name, weights=None, **args)

    module, result, extra, notes = fit_architecture(
        build, weights, name, default_classes=1000, optional=_OPTIONAL.get(name),
        hint=lambda head: factory_hint(f"torchvision.models.{name}()", head),
    )
    return module, (result, extra, notes)


def looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or Path(text).suffix.lower() in {
        ".pt", ".pth", ".bin", ".ckpt", ".tar", ".safetensors"}


def _fetch_torchvision_weights(name: str, weights: Any) -> dict[str, torch.Tensor]:
    """Torchvision's cached or downloaded weights; offline without a cache, say how to supply a file."""
    filename = Path(weights.url).name
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=False, map_location="cpu",
                                                  check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise AuditorError(
            f"--weights: could not download {name} weights {weights.name} ({error}). Offline? Fetch "
            f"{weights.url} on a connected machine and pass --weights /path/to/{filename}, or copy it into "
            f"{cache}/, or use --weights none for random weights"
        ) from None
