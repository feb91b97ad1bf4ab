"""LoadedModel (what the audit and its record know about the model), hashes and ImageNet's class names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditor.inputs.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

RANDOM_WEIGHTS = "random initialisation"
ASSUMED_PREPROCESS = (
    f"ImageNet defaults (resize 256, crop 224, mean {IMAGENET_MEAN}, std {IMAGENET_STD}); "
    "set --input-size/--mean/--std if the model expects otherwise"
)


@dataclass
class LoadedModel:
    """A classifier ready to audit, with what the report needs to describe it."""

    module: nn.Module  # what every technique calls: returns logits (see `output`), names and weights the user's
    preprocess: Preprocess
    class_names: list[str]
    name: str  # short display name
    spec: str  # the spec as the user gave it
    kind: str  # "built-in", "torchvision", "timm", "huggingface", "torchscript", "callable", "pickled module", "module"
    weights: str  # where the weights came from, in words
    sha256: str = ""  # of the state dict (names, dtypes, shapes, values), filled by load_model
    file_sha256: dict[str, str] = field(default_factory=dict)  # of each file read
    notes: list[str] = field(default_factory=list)
    # How the weights were read, for the record (empty when no file was): from a weights file "file",
    # "format" ("safetensors" | "torch"), "wrapper" (keys leading to the state dict, "/"-joined, e.g.
    # "state_dict" or "model/ema"; "" for a plain one), "prefix" (removed from every key, e.g. "model." or
    # "module._orig_mod."), "added_prefix" (put before every key: a factory module wrapping the checkpoint's
    # model), "ignored_keys" / "ignored_examples" (entries outside the prefix, not loaded), "also_fitting"
    # (other wrappers that fit too, e.g. ["state_dict_ema"]); after a rebuild "head" ({"modules": [...],
    # "classes": K, "default_classes": 1000}) and "architecture_args" (e.g. {"num_classes": 4,
    # "aux_logits": False} or {"in_chans": 1}); a timm folder's "model_args". A Hugging Face folder:
    # "folder", "files", "format", "model_type", "unexpected_keys" (a count).
    checkpoint: dict[str, Any] = field(default_factory=dict)
    # How the model's output becomes logits: "tensor" (as returned), "tuple[i]" / "list[i]" (the first
    # batch x classes tensor), 'dict["key"]', "logits attribute" (Hugging Face outputs), or "not probed"
    # (the probe forward failed; the module is not wrapped). See auditor.inputs.models.outputs.
    output: str = "tensor"
    # One logit z per image (N x 1 or N): `module` returns [-z, z] (negative, positive) through the adapter.
    binary: bool = False
    multi_label: bool = False  # the model's own config says multi-label (Hugging Face problem_type)
    preprocess_source: str = ""  # where the preprocessing came from, in words ("assumed" when nothing said)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def user_module(self) -> nn.Module:
        """The module exactly as the user's code, file or folder made it (`module` may be its output adapter)."""
        from auditor.inputs.models.outputs import unwrap

        return unwrap(self.module)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in torchvision's (standard) order."""
    import torchvision

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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def require(module: str, extra: str, spec: str) -> Any:
    """Import an optional dependency, or one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        from auditor.errors import AuditorError

        raise AuditorError(f"--model: {spec} needs {module.split('.')[0]}, which is not installed: "
                           f"pip install 'auditor[{extra}]'") from None
