"""Weights files: read them without unpickling code, find the state dict inside, fit its keys to a model.

A file is a `.safetensors` file (read with the safetensors package) or a torch.save file, always read with
torch.load(weights_only=True). The state dict may be the whole file or sit under the usual wrappers
(`state_dict`, `model_state_dict`, `model`, `ema`, ... at any depth), and its keys may carry a prefix
(Lightning's `model.`, DDP's `module.`, torch.compile's `_orig_mod.`, any attribute name, combinations):
`fit` tries every candidate state dict and every prefix that makes keys match the model's, and keeps the
one that fits best. A classifier head with another class count is found here (`head_classes`) so that the
architecture can be rebuilt with it; the callers (torchvision, timm, built-in) do the rebuilding.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.loaded import LoadedModel, file_sha256, first_line

# Names under which training code keeps the weights, in order of preference when several fit: the
# trained weights before their moving average (timm's validate.py and Lightning load `state_dict`).
WRAPPER_KEYS = (
    "state_dict", "model_state_dict", "model", "module", "net", "network", "weights", "params", "model_weights",
    "student", "generator",
    "state_dict_ema", "model_ema", "ema", "ema_state_dict", "ema_model", "params_ema", "teacher",
)
_MAX_DEPTH = 4
_TOLERATED_MISSING = ("num_batches_tracked",)  # BatchNorm counters, absent from older checkpoints
_EXAMPLES = 3


@dataclass
class Checkpoint:
    """A weights file as read: every mapping of names to tensors in it, best guesses first."""

    path: Path
    format: str  # "safetensors" or "torch"
    candidates: list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]  # (keys leading to it, tensors)
    sha256: str


@dataclass
class Fit:
    """One candidate state dict, renamed to a model's keys, and what still does not fit."""

    checkpoint: Checkpoint
    wrapper: tuple[str, ...]
    prefix: str  # removed from the start of every key
    added_prefix: str  # put before every key
    state: dict[str, torch.Tensor]  # in the model's names
    ignored: list[str]  # entries of the candidate outside `prefix`: not loaded
    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]
    expected_shapes: dict[str, tuple[int, ...]] = field(repr=False, default_factory=dict)
    also_fitting: list[str] = field(default_factory=list)  # other wrappers that fit as well (e.g. the EMA)

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    @property
    def wrapper_text(self) -> str:
        return "/".join(self.wrapper)

    def record(self) -> dict[str, Any]:
        """For LoadedModel.checkpoint."""
        return {
            "file": self.checkpoint.path.name,
            "format": self.checkpoint.format,
            "wrapper": self.wrapper_text,
            "prefix": self.prefix,
            "added_prefix": self.added_prefix,
            "ignored_keys": len(self.ignored),
            "ignored_examples": self.ignored[:10],
            "also_fitting": self.also_fitting,
        }

    def notes(self) -> list[str]:
        """What was done to read the file, in words, for the record; nothing for a plain state dict."""
        name = self.checkpoint.path.name
        notes = []
        renamed = []
        if self.prefix:
            renamed.append(f"the prefix {self.prefix!r} removed from every key")
        if self.added_prefix:
            renamed.append(f"the prefix {self.added_prefix!r} added to every key")
        if self.wrapper or renamed:
            text = "the state dict"
            if self.wrapper:
                text += f" under checkpoint[{']['.join(repr(k) for k in self.wrapper)}]"
            if renamed:
                text += f", with {' and '.join(renamed)}"
            notes.append(f"Weights from {name}: {text}.")
        if self.ignored:
            notes.append(f"{len(self.ignored)} entries of {name} outside {self.prefix!r} were not loaded "
                         f"(e.g. {', '.join(self.ignored[:_EXAMPLES])}).")
        if self.also_fitting:
            notes.append(f"{name} also holds {', '.join(self.also_fitting)}, which fits too and was not used.")
        return notes


def is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def torch_load(path: Path, option: str, *, weights_only: bool, refused: str) -> Any:
    """torch.load, with every failure as one line naming `option`; `refused` says why weights_only said no."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if weights_only:
            raise AuditorError(f"{option}: {path} {refused}") from None
        raise AuditorError(f"{option}: cannot read {path} as a PyTorch file ({first_line(error)})") from None
    except Exception as error:  # torch.load raises KeyError, ValueError, ... on files it cannot parse
        raise AuditorError(f"{option}: cannot read {path} as a PyTorch file ({first_line(error)})") from None


def read_safetensors(path: Path, option: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise AuditorError(f"{option}: cannot read {path} as a safetensors file ({first_line(error)})") from None


def read_checkpoint(path: Path, option: str = "--weights") -> Checkpoint:
    """Every mapping of names to tensors in a weights file; refuses anything that needs unpickling code."""
    if not path.is_file():
        raise AuditorError(f"{option}: {path} is neither a known weights name nor an existing file")
    if is_safetensors(path):
        tensors = read_safetensors(path, option)
        return Checkpoint(path, "safetensors", [((), tensors)], file_sha256(path))
    if is_torchscript(path):
        raise AuditorError(f"{option}: {path} is a TorchScript model, not a state dict; pass it as --model "
                           f"(without --weights)")
    loaded = torch_load(path, option, weights_only=True,
                        refused="is not a plain state_dict (it needs unpickling code); save model.state_dict() "
                                "with torch.save (or safetensors) and pass that file")
    candidates = _tensor_mappings(loaded, ())
    if not candidates:
        raise AuditorError(f"{option}: {path} does not hold a state_dict (a mapping of names to tensors)")
    candidates.sort(key=lambda item: _wrapper_rank(item[0]))
    return Checkpoint(path, "torch", candidates, file_sha256(path))


def _tensor_mappings(obj: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], dict[str, torch.Tensor]]]:
    if not isinstance(obj, Mapping):
        return []
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    found = [(path, tensors)] if tensors else []
    if len(path) < _MAX_DEPTH:
        for key, value in obj.items():
            if isinstance(key, str) and isinstance(value, Mapping):
                found += _tensor_mappings(value, (*path, key))
    return found


def _wrapper_rank(path: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(WRAPPER_KEYS.index(k) if k in WRAPPER_KEYS else len(WRAPPER_KEYS) for k in path) or (-1,)


def _prefix_counts(keys: set[str], expected: set[str]) -> Counter[tuple[str, str]]:
    """For each (prefix to strip, prefix to add): how many of the model's keys it makes match."""
    counts: Counter[tuple[str, str]] = Counter()
    for key in keys:
        if key in expected:
            counts["", ""] += 1
        dot = key.find(".")
        while dot != -1:
            if key[dot + 1:] in expected:
                counts[key[:dot + 1], ""] += 1
            dot = key.find(".", dot + 1)
    for key in expected:  # the checkpoint of a model the user's module wraps (net.conv1 from conv1)
        dot = key.find(".")
        while dot != -1:
            if key[dot + 1:] in keys:
                counts["", key[:dot + 1]] += 1
            dot = key.find(".", dot + 1)
    return counts


def fit(checkpoint: Checkpoint, expected: Mapping[str, torch.Tensor]) -> Fit:
    """The candidate state dict and key prefix that fit `expected` (a model's state_dict) best."""
    shapes = {k: tuple(v.shape) for k, v in expected.items()}
    wanted = set(shapes)
    choices = []
    for rank, (wrapper, tensors) in enumerate(checkpoint.candidates):
        counts = _prefix_counts(set(tensors), wanted) or Counter({("", ""): 0})
        for (strip, add), count in counts.items():
            renamed = {add + k[len(strip):]: v for k, v in tensors.items() if k.startswith(strip)}
            unexpected = len(renamed.keys() - wanted)
            choices.append(((count, -unexpected, -rank, -len(strip) - len(add)), wrapper, strip, add, renamed, tensors))
    choices.sort(key=lambda choice: choice[0], reverse=True)
    _, wrapper, strip, add, state, tensors = choices[0]
    result = _describe(checkpoint, wrapper, strip, add, state, tensors, shapes)
    best_score = choices[0][0][:2]
    result.also_fitting = sorted({"/".join(w) for score, w, *_ in choices[1:]
                                  if w and w != wrapper and score[:2] == best_score and best_score[0] == len(wanted)})
    return result


def _describe(checkpoint: Checkpoint, wrapper: tuple[str, ...], strip: str, add: str,
              state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
              shapes: dict[str, tuple[int, ...]]) -> Fit:
    missing = [k for k in shapes if k not in state and not k.endswith(_TOLERATED_MISSING)]
    unexpected = [k for k in state if k not in shapes]
    wrong = [k for k in state if k in shapes and tuple(state[k].shape) != shapes[k]]
    ignored = [k for k in tensors if not k.startswith(strip)]
    return Fit(checkpoint, wrapper, strip, add, state, ignored, missing, unexpected, wrong, shapes)


def head_classes(result: Fit, heads: list[str]) -> int | None:
    """The class count of a checkpoint whose only misfit is the classifier `heads` (module names):
    every wrong-shaped tensor is a head's weight or bias, with only its first dimension changed."""
    if result.missing or result.unexpected or not result.wrong_shape:
        return None
    classes = set()
    for key in result.wrong_shape:
        module, _, leaf = key.rpartition(".")
        got, want = tuple(result.state[key].shape), result.expected_shapes[key]
        if module not in heads or leaf not in ("weight", "bias") or len(got) != len(want) or got[1:] != want[1:]:
            return None
        classes.add(got[0])
    return classes.pop() if len(classes) == 1 else None


def default_heads(module: nn.Module, classes: int = 1000) -> list[str]:
    """The classifier layers of a model built with `classes` outputs: each Linear (or 1x1 Conv2d, as in
    SqueezeNet) with that many outputs; several for Inception and GoogLeNet's auxiliary heads."""
    return [name for name, m in module.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == classes)]


def misfit_message(result: Fit, what: str, hint: str = "") -> str:
    """One line: which keys do not fit, with examples, and (for a changed head) how to write a factory."""
    parts = []
    if result.missing:
        parts.append(f"{len(result.missing)} missing keys (e.g. {', '.join(result.missing[:_EXAMPLES])})")
    if result.unexpected:
        parts.append(f"{len(result.unexpected)} unexpected keys (e.g. {', '.join(result.unexpected[:_EXAMPLES])})")
    if result.wrong_shape:
        shown = ", ".join(f"{k}: file {list(result.state[k].shape)}, model {list(result.expected_shapes[k])}"
                          for k in result.wrong_shape[:_EXAMPLES])
        parts.append(f"{len(result.wrong_shape)} tensors of the wrong shape ({shown})")
    read = []
    if result.wrapper:
        read.append(f"state dict under {result.wrapper_text!r}")
    if result.prefix:
        read.append(f"prefix {result.prefix!r} removed")
    how = f" [{', '.join(read)}]" if read else ""
    return (f"--weights: {result.checkpoint.path} does not fit the model ({what}){how}: {'; '.join(parts)}"
            f"{'. ' + hint if hint else ''}")


def factory_hint(build: str, head: str, imports: str = "torch, torchvision") -> str:
    """How to write a file.py:factory for an architecture whose head was replaced."""
    attribute = "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in head.split("."))
    return (f"If they belong to a layer you replaced (e.g. a Sequential put in place of {head}), write the model "
            f"as your training code built it in a file, e.g. model.py: `import {imports}` and "
            f"`def build(): m = {build}; m{attribute} = torch.nn.Sequential(...); return m`, "
            f"then pass --model model.py:build --weights FILE")


def load_fitted(module: nn.Module, result: Fit, what: str, hint: str = "") -> None:
    """Load a fitting state dict into `module`, or one line saying what does not fit."""
    if not result.fits:
        raise AuditorError(misfit_message(result, what, hint))
    try:
        outcome = module.load_state_dict(result.state, strict=False)
    except RuntimeError as error:  # cannot happen for a fit, but say so in one line if it does
        raise AuditorError(f"--weights: {result.checkpoint.path} does not fit the model ({what}): "
                           f"{first_line(error)}") from None
    left = [k for k in outcome.missing_keys if not k.endswith(_TOLERATED_MISSING)]
    if left or outcome.unexpected_keys:
        raise AuditorError(f"--weights: {result.checkpoint.path} does not fit the model ({what}): "
                           f"{len(left)} missing keys (e.g. {left[:2]}), {len(outcome.unexpected_keys)} "
                           f"unexpected keys (e.g. {outcome.unexpected_keys[:2]})")


def record_fit(loaded: LoadedModel, result: Fit, extra: dict[str, Any] | None = None) -> None:
    """Put how the file was read into the LoadedModel's checkpoint record and notes."""
    loaded.checkpoint = {**result.record(), **(extra or {})}
    loaded.notes.extend(result.notes())
    loaded.file_sha256[result.checkpoint.path.name] = result.checkpoint.sha256


def record_rebuild(loaded: LoadedModel, fitted: tuple[Fit, dict[str, Any], list[str]]) -> None:
    """record_fit for fit_architecture's (fit, extra, notes); a rebuilt head's classes are not the
    architecture's default names (ImageNet's categories), so those are dropped."""
    result, extra, notes = fitted
    record_fit(loaded, result, extra)
    loaded.notes.extend(notes)
    if "head" in extra:
        loaded.class_names = []


def load_weights_file(module: nn.Module, weights: str, what: str, hint: str = "") -> tuple[Fit, str]:
    """Read `weights` and load it into `module` as it is (no rebuilding): factories and built models."""
    result = fit(read_checkpoint(Path(weights)), module.state_dict())
    load_fitted(module, result, what, hint)
    return result, weights_description(result)


def weights_description(result: Fit) -> str:
    kind = "safetensors file" if result.checkpoint.format == "safetensors" else "state_dict file"
    return f"{kind} {result.checkpoint.path.name}"


def fit_architecture(build: Callable[..., nn.Module], weights: str, what: str, *, default_classes: int | None,
                     heads: list[str] | None = None, optional: Mapping[str, tuple[str, ...]] | None = None,
                     channels: tuple[str, str] | None = None, hint: Callable[[str], str] | None = None
                     ) -> tuple[nn.Module, Fit, dict[str, Any], list[str]]:
    """Build an architecture that fits a weights file, rebuilding it where the file says how.

    `build(**args)` makes the architecture; it is rebuilt with `num_classes=K` when the only misfit is the
    classifier `heads` (default: the layers with `default_classes` outputs) with K outputs, with
    `ARG=False` for an `optional` part (ARG: key prefixes) absent from the file (Inception's auxiliary head),
    and with `channels` = (ARG, first conv) `ARG=C` when the first convolution takes C channels (timm's
    in_chans). `hint(head)` (head: the main classifier's name) ends the line of a file that does not fit.
    Returns the loaded module, the fit, the record's extra entries and notes.
    """
    checkpoint = read_checkpoint(Path(weights))
    module = build()
    heads = default_heads(module, default_classes) if heads is None and default_classes else list(heads or [])
    args: dict[str, Any] = {}
    notes: list[str] = []
    extra: dict[str, Any] = {}
    result = fit(checkpoint, module.state_dict())
    for _ in range(3):
        if result.fits:
            break
        changed: dict[str, Any] = {}
        for arg, prefixes in (optional or {}).items():
            if arg not in args and result.missing and all(k.startswith(prefixes) for k in result.missing):
                changed[arg] = False
                notes.append(f"{what}: the checkpoint has no {', '.join(p.rstrip('.') for p in prefixes)}; "
                             f"built with {arg}=False.")
        if channels is not None and "in" not in extra:
            arg, first_conv = channels
            key = f"{first_conv}.weight"
            if key in result.wrong_shape:
                got, want = tuple(result.state[key].shape), result.expected_shapes[key]
                if len(got) == len(want) == 4 and got[0] == want[0] and got[2:] == want[2:]:
                    changed[arg] = got[1]
                    extra["in"] = got[1]
                    notes.append(f"{what}: the checkpoint's first convolution ({first_conv}) takes {got[1]} "
                                 f"channels, not {want[1]}; built with {arg}={got[1]}.")
        classes = head_classes(result, heads) if not changed else None
        if classes is not None and "num_classes" not in args:
            changed["num_classes"] = classes
            touched = sorted({k.rpartition(".")[0] for k in result.wrong_shape})
            extra["head"] = {"modules": touched, "classes": classes, "default_classes": default_classes}
            notes.append(f"Fine-tuned head: the checkpoint's classifier ({', '.join(touched)}) has {classes} "
                         f"classes, not {default_classes}; {what} was built with num_classes={classes}.")
        if not changed:
            break
        args.update(changed)
        module = build(**args)
        result = fit(checkpoint, module.state_dict())
    extra.pop("in", None)
    if not result.fits:
        load_fitted(module, result, what, hint(heads[-1] if heads else "the classifier") if hint else "")
    load_fitted(module, result, what)
    if args:
        extra["architecture_args"] = dict(args)
    return module, result, extra, notes
