"""load_model: which source a spec names, then the overrides, the output adapter and the hash."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models import (
    builtin,
    files,
    huggingface,
    timm_models,
    torchvision_models,
)
from auditor.inputs.models.builtin import DEFAULT_MODEL
from auditor.inputs.models.labels import read_labels
from auditor.inputs.models.loaded import (
    ASSUMED_PREPROCESS,
    RANDOM_WEIGHTS,
    LoadedModel,
    state_dict_sha256,
)
from auditor.inputs.models.outputs import adapt_output, wrap
from auditor.inputs.preprocess import Preprocess, Size
from auditor.nn.layers import input_channels

# Kinds whose output is known to be a logits tensor: no probe forward is needed.
_TENSOR_KINDS = ("built-in", "torchvision", "timm")


def load_model(
    spec: str | nn.Module = DEFAULT_MODEL,
    weights: str | None = None,
    *,
    trust_pickle: bool = False,
    labels: str | Path | None = None,
    input_size: Size | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    channels: int | None = None,
) -> LoadedModel:
    """Load a model for auditing; see the README's "Models" table for every kind of spec.

    `weights`: for torchvision names "DEFAULT" (the default), an enum name such as "IMAGENET1K_V1",
    "none" for random weights, or a weights file (a state dict, possibly wrapped or prefixed, or
    .safetensors); for `timm:NAME` a weights file (or "none"); for factories and the built-in model a
    weights file. `input_size`: one int (square) or (height, width). `channels`: the input channels the
    model takes (1, 3 or 4); by default those of its first convolution, and the images are converted to match.

    A model that returns a tuple, a dict or an object with `logits` comes back wrapped in a LogitsAdapter
    (LoadedModel.output says which rule; LoadedModel.user_module is the module as given).
    """
    if isinstance(spec, nn.Module):
        loaded = LoadedModel(spec, Preprocess(), [], type(spec).__name__, type(spec).__name__, "module", "as given",
                             preprocess_source="assumed")
    else:
        loaded = _load_spec(spec.strip(), weights, trust_pickle)
    if labels is not None:
        loaded.class_names = read_labels(Path(labels))
    preprocess = loaded.preprocess
    if input_size is not None:
        preprocess = preprocess.with_input_size(input_size)
    if mean is not None or std is not None:
        preprocess = dataclasses.replace(preprocess, mean=mean or preprocess.mean, std=std or preprocess.std)
    overridden = (input_size, mean, std) != (None, None, None)
    if overridden and loaded.preprocess_source:
        given = [name for name, value in (("--input-size", input_size), ("--mean", mean), ("--std", std))
                 if value is not None]
        loaded.preprocess_source += f", overridden by {', '.join(given)}"
    detected = input_channels(loaded.module)  # a count Preprocess cannot make (2, 5...) is left to --channels
    if (channels or detected) != preprocess.channels and (channels or detected) in (1, 3, 4):
        preprocess = dataclasses.replace(preprocess, channels=channels or detected)
        how = {1: "converted to grayscale", 3: "given as RGB", 4: "given as RGBA (alpha kept)"}[preprocess.channels]
        why = "--channels" if channels else "the first convolution"
        loaded.notes.append(f"The model takes {preprocess.channels} input channel{'s' * (preprocess.channels > 1)} "
                            f"({why}): the images are {how}.")
    loaded.preprocess = preprocess
    if loaded.weights == RANDOM_WEIGHTS:
        loaded.notes.append("Random weights: the predictions and explanations describe an untrained network.")
    if loaded.preprocess_source == "assumed" and not overridden:
        loaded.notes.append(f"Preprocessing assumed: {ASSUMED_PREPROCESS}.")
    if loaded.kind not in _TENSOR_KINDS:
        adapt_output(loaded)
    elif _classes(loaded) == 1:  # a fine-tuned one-logit head: no probe needed to know it
        wrap(loaded, "tensor", binary=True)
    loaded.sha256 = state_dict_sha256(loaded.module)
    return loaded


def _load_spec(spec: str, weights: str | None, trust_pickle: bool) -> LoadedModel:
    if spec.lower() in builtin.LITE0_NAMES:
        return builtin.load_lite0(spec, weights)
    if spec.startswith(timm_models.PREFIX):
        return timm_models.load_timm_name(spec, weights)
    path = Path(spec)
    if path.is_dir():
        return _load_folder(path, weights)
    if path.is_file():
        if weights is not None and weights.lower() != "none":
            raise AuditorError(f"--weights: {spec} is a whole model file; --weights only goes with an architecture "
                               f"name")
        return files.load_model_file(path, trust_pickle)
    if ":" in spec and not path.exists():
        return files.load_callable(spec, weights)
    if spec in torchvision_models.names():
        return torchvision_models.load_torchvision(spec, weights)
    if path.suffix in files.MODEL_FILE_SUFFIXES:
        raise AuditorError(f"--model: file {spec} does not exist")
    choices = [DEFAULT_MODEL, *torchvision_models.names()]
    close = difflib.get_close_matches(spec, choices, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise AuditorError(
        f"--model: unknown model {spec!r}: give {DEFAULT_MODEL}, a torchvision classification model name, "
        f"timm:NAME, a folder written by save_pretrained (transformers) or timm, a TorchScript or model file, "
        f"or package.module:factory.{hint}"
    )


def _load_folder(path: Path, weights: str | None) -> LoadedModel:
    if weights is not None and weights.lower() != "none":
        raise AuditorError(f"--weights: {path} is a model folder, which holds its own weights; drop --weights")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise AuditorError(f"--model: {path} is a folder without config.json; give a folder written by "
                           f"save_pretrained (transformers) or by timm's save_for_hf / push_to_hub")
    config = huggingface.read_json(config_path)
    if "architecture" in config and "model_type" not in config:
        return timm_models.load_timm_folder(path, config)
    if huggingface.is_hf_config(config):
        return huggingface.load_hf_folder(path, config)
    raise AuditorError(f"--model: {config_path} is neither timm's (no `architecture`) nor transformers' (no "
                       f"`model_type`)")



def _classes(loaded: LoadedModel) -> int | None:
    """The class count of a torchvision, timm or built-in model, from its rebuilt head or timm's num_classes."""
    head = loaded.checkpoint.get("head") or {}
    return head.get("classes") or getattr(loaded.module, "num_classes", None)
