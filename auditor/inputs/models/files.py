"""Models from files and code: TorchScript, pickled modules (only with --trust-pickle), and factories
(`path/to/file.py:factory`, `package.module:factory`), with an optional weights file."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.checkpoints import (
    is_safetensors,
    is_torchscript,
    load_weights_file,
    record_fit,
    torch_load,
)
from auditor.inputs.models.loaded import LoadedModel, file_sha256, first_line
from auditor.inputs.preprocess import Preprocess

MODEL_FILE_SUFFIXES = {".pt", ".pth", ".ts", ".pkl", ".bin", ".ckpt", ".safetensors"}


def load_model_file(path: Path, trust_pickle: bool) -> LoadedModel:
    files = {path.name: file_sha256(path)}
    if is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # a damaged archive surfaces as RuntimeError from the C++ loader
            raise AuditorError(f"--model: cannot read {path} as TorchScript ({first_line(error)})") from None
        module.eval()
        return LoadedModel(module, Preprocess(), [], path.stem, str(path), "torchscript", f"TorchScript {path.name}",
                           file_sha256=files, preprocess_source="assumed")
    if is_safetensors(path):
        raise AuditorError(f"--model: {path} holds weights only (safetensors), not a model; pass the architecture "
                           f"as --model (e.g. resnet50, timm:NAME or file.py:factory) and this file as --weights")
    loaded = torch_load(path, "--model", weights_only=not trust_pickle,
                        refused="is a pickled model; unpickling runs code from the file. Pass --trust-pickle only "
                                "if you trust it, or save it as TorchScript or as a state_dict with its architecture")
    if isinstance(loaded, nn.Module):
        loaded.eval()
        return LoadedModel(loaded, Preprocess(), [], type(loaded).__name__, str(path), "pickled module",
                           f"pickled module {path.name} (trusted)", file_sha256=files, preprocess_source="assumed")
    if not isinstance(loaded, dict):
        raise AuditorError(f"--model: {path} holds a {type(loaded).__name__}, not a torch.nn.Module")
    raise AuditorError(
        f"--model: {path} holds a state_dict, not a model; pass the architecture as --model "
        f"(e.g. resnet50 or package.module:factory) and this file as --weights"
    )


def _import_factory(spec: str) -> Any:
    module_name, _, attribute = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise AuditorError(f"--model: {module_name} does not exist")
            # A private module name: a user file called json.py must not replace the standard json.
            name = f"auditor_user_model_{path.stem}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise AuditorError(f"--model: cannot import {module_name!r} from {spec!r} ({error})") from None
    factory = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise AuditorError(f"--model: {module_name} has no attribute {attribute!r}")
    return factory


def load_callable(spec: str, weights: str | None) -> LoadedModel:
    factory = _import_factory(spec)
    try:
        module = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as error:
        raise AuditorError(f"--model: {spec} raised {type(error).__name__}: {error}".splitlines()[0]) from None
    if not isinstance(module, nn.Module):
        raise AuditorError(f"--model: {spec} returned {type(module).__name__}, not a torch.nn.Module")
    result = None
    description = "as built by the factory"
    if weights is not None and weights.lower() != "none":
        result, description = load_weights_file(module, weights, spec)
    module.eval()
    loaded = LoadedModel(module, Preprocess(), [], type(module).__name__, spec, "callable", description,
                         preprocess_source="assumed")
    if result is not None:
        record_fit(loaded, result)
    return loaded
