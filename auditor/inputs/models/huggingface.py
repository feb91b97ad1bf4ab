"""Hugging Face transformers image classifiers from a folder written by save_pretrained.

AutoModelForImageClassification.from_pretrained(DIR, local_files_only=True), never trust_remote_code: a
folder that needs its own code is refused with one line. `.bin` weights are first read with
torch.load(weights_only=True), so nothing in them runs; safetensors are used where present. Preprocessing
comes from the folder's preprocessor_config.json (AutoImageProcessor), checked against the processor
itself on a test image; class names from config.id2label; `problem_type: multi_label_classification` sets
LoadedModel.multi_label. The model returns an ImageClassifierOutput: the output adapter takes its logits.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from auditor.errors import AuditorError
from auditor.inputs.models.checkpoints import torch_load
from auditor.inputs.models.labels import names_by_index
from auditor.inputs.models.loaded import LoadedModel, file_sha256, first_line, require
from auditor.inputs.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    compare_preprocessing,
)

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# PIL's resampling filters by number, as Hugging Face image processors store them
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_FACTORY = ("write a file.py:factory that builds the model from code you have read (e.g. `def build(): "
            "return MyModel.from_pretrained(DIR)` with its class imported), and pass --model file.py:build")


def is_hf_config(config: Mapping[str, Any]) -> bool:
    return "model_type" in config or "architectures" in config or "auto_map" in config


def load_hf_folder(path: Path, config: Mapping[str, Any]) -> LoadedModel:
    spec = str(path)
    if "auto_map" in config:
        raise AuditorError(f"--model: {path} needs custom code (config.json has auto_map "
                           f"{', '.join(map(str, config['auto_map'].values()))}); auditor never runs a folder's code "
                           f"(trust_remote_code): {_FACTORY}")
    processor_file = path / "preprocessor_config.json"
    if processor_file.is_file() and "auto_map" in read_json(processor_file):
        raise AuditorError(f"--model: {path} has an image processor that needs custom code (auto_map in "
                           f"preprocessor_config.json); auditor never runs a folder's code (trust_remote_code): "
                           f"{_FACTORY}")
    transformers = require("transformers", "hf", spec)
    with _quiet(transformers):
        try:
            hf_config = transformers.AutoConfig.from_pretrained(str(path.resolve()), local_files_only=True)
        except (ValueError, KeyError) as error:
            raise AuditorError(f"--model: {path}: this transformers ({transformers.__version__}) does not know model "
                               f"type {config.get('model_type')!r} ({type(error).__name__}); if it is custom code, "
                               f"{_FACTORY}") from None
        mapping = transformers.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING
        if type(hf_config) not in mapping:
            raise AuditorError(f"--model: {path}: {type(hf_config).__name__} ({hf_config.model_type}) has no "
                               f"image-classification model in transformers; {_FACTORY}")
        files = _weights_files(path)
        hashes = {f.name: file_sha256(f) for f in files}
        hashes.update({f.name: file_sha256(f) for f in (path / "config.json", processor_file) if f.is_file()})
        for file in files:  # nothing that needs unpickling code, whatever transformers would do with it
            if file.suffix == ".bin":
                torch_load(file, "--model", weights_only=True,
                           refused="is not a plain state dict (it needs unpickling code); save the model again "
                                   "with save_pretrained, which writes model.safetensors")
        safetensors = any(f.suffix == ".safetensors" for f in files)
        try:
            module, info = transformers.AutoModelForImageClassification.from_pretrained(
                str(path.resolve()), config=hf_config, local_files_only=True, use_safetensors=safetensors,
                output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise AuditorError(f"--model: cannot load {path} with transformers ({first_line(error)})") from None
    missing = list(info.get("missing_keys") or [])
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        keys = missing + mismatched
        raise AuditorError(f"--model: the weights in {path} do not fit {type(module).__name__}: {len(missing)} "
                           f"missing and {len(mismatched)} mismatched keys (e.g. {', '.join(keys[:3])}); a model "
                           f"saved without its classifier (a base model) cannot be audited as a classifier")
    module.eval()
    names = _class_names(hf_config)
    loaded = LoadedModel(module, Preprocess(), names, type(module).__name__, spec, "huggingface",
                         f"save_pretrained folder {path.name} ({', '.join(f.name for f in files)})",
                         file_sha256=hashes)
    unexpected = list(info.get("unexpected_keys") or [])
    if unexpected:
        loaded.notes.append(f"{len(unexpected)} entries of the weights are not used by {type(module).__name__} "
                            f"(e.g. {', '.join(unexpected[:3])}).")
    loaded.checkpoint = {"folder": path.name, "files": [f.name for f in files],
                         "format": "safetensors" if safetensors else "torch", "model_type": hf_config.model_type,
                         "unexpected_keys": len(unexpected)}
    loaded.multi_label = getattr(hf_config, "problem_type", None) == "multi_label_classification"
    if loaded.multi_label:
        loaded.notes.append("The model's config says multi-label classification (problem_type).")
    if not names and hf_config.num_labels:
        loaded.notes.append("config.id2label holds only the default names (LABEL_0, ...): pass --labels.")
    _set_preprocess(loaded, transformers, path, hf_config)
    return loaded


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AuditorError(f"--model: cannot read {path} as JSON ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise AuditorError(f"--model: {path} does not hold a JSON object")
    return data


def _weights_files(path: Path) -> list[Path]:
    for names in (SAFE_WEIGHTS, PICKLE_WEIGHTS):
        for name in names:
            if (path / name).is_file():
                if name.endswith(".index.json"):  # shards
                    shards = sorted(set(read_json(path / name).get("weight_map", {}).values()))
                    return [path / name, *(path / s for s in shards)]
                return [path / name]
    raise AuditorError(f"--model: {path} holds no weights (model.safetensors or pytorch_model.bin, as "
                       f"save_pretrained writes them)")


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No progress bars or loading chatter from transformers while loading; its settings restored after."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _class_names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    names = names_by_index(id2label) if id2label else []
    if all(re.fullmatch(r"LABEL_\d+", n) for n in names):  # transformers' placeholders, not names
        return []
    return names


def _get(size: Any, key: str) -> Any:
    if size is None:
        return None
    return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)


def _resample(value: Any) -> str:
    if isinstance(value, str):
        return value.lower() if value.lower() in _RESAMPLE.values() else "bilinear"
    if hasattr(value, "value") and isinstance(value.value, str):  # torchvision InterpolationMode
        return value.value if value.value in _RESAMPLE.values() else "bilinear"
    try:
        return _RESAMPLE.get(int(value), "bilinear")
    except (TypeError, ValueError):
        return "bilinear"


def hf_preprocess(processor: Any) -> tuple[Preprocess, list[str]]:
    """Preprocess for a Hugging Face image processor: size (height/width, or shortest_edge, with ConvNeXt's
    crop_pct), crop_size when do_center_crop, resample, image_mean and image_std; notes where it is approximate."""
    notes = []
    size, crop_size = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    center_crop = bool(getattr(processor, "do_center_crop", False)) and crop_size is not None
    interpolation = _resample(getattr(processor, "resample", 2))
    normalize = getattr(processor, "do_normalize", True)
    mean = tuple(_triple(getattr(processor, "image_mean", None), IMAGENET_MEAN)) if normalize else (0.0, 0.0, 0.0)
    std = tuple(_triple(getattr(processor, "image_std", None), IMAGENET_STD)) if normalize else (1.0, 1.0, 1.0)
    rescale = getattr(processor, "rescale_factor", 1 / 255) if getattr(processor, "do_rescale", True) else None
    if rescale is None or abs(rescale - 1 / 255) > 1e-9:
        notes.append(f"The image processor rescales pixels by {rescale} (auditor by 1/255): the inputs differ.")
    if getattr(processor, "do_flip_channel_order", False):
        notes.append("The image processor flips the channel order (BGR); auditor feeds RGB.")
    height, width, shortest = _get(size, "height"), _get(size, "width"), _get(size, "shortest_edge")
    crop = (_get(crop_size, "height"), _get(crop_size, "width")) if center_crop else None
    crop_pct = getattr(processor, "crop_pct", None)
    if not getattr(processor, "do_resize", True):
        notes.append("The image processor does not resize; auditor resizes to the model's input size.")
    if height and width:
        preprocess = Preprocess(resize=(height, width), crop=crop or (height, width), mean=mean, std=std,
                                interpolation=interpolation, resize_mode="exact")
    elif shortest and crop_pct is not None and not center_crop:  # ConvNeXt's (and ResNet's) processor
        if shortest < 384:
            preprocess = Preprocess(resize=int(shortest / crop_pct), crop=shortest, mean=mean, std=std,
                                    interpolation=interpolation)
        else:
            preprocess = Preprocess(resize=shortest, crop=shortest, mean=mean, std=std, interpolation=interpolation,
                                    resize_mode="exact")
    elif shortest:
        if crop is None:
            notes.append(f"The image processor resizes the shortest edge to {shortest} without cropping; auditor "
                         f"center-crops {shortest} x {shortest} so that every input has one size.")
        preprocess = Preprocess(resize=shortest, crop=crop or shortest, mean=mean, std=std, interpolation=interpolation)
    else:
        raise ValueError(f"an image processor size {size!r} that auditor cannot reproduce")
    return preprocess, notes


def _triple(values: Any, default: tuple[float, float, float]) -> tuple[float, ...]:
    if values is None:
        return default
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    return tuple(float(v) for v in values)


def _set_preprocess(loaded: LoadedModel, transformers: Any, path: Path, config: Any) -> None:
    try:
        with _quiet(transformers):
            processor = transformers.AutoImageProcessor.from_pretrained(str(path.resolve()), local_files_only=True)
        loaded.preprocess, notes = hf_preprocess(processor)
    except (OSError, ValueError, KeyError) as error:
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else tuple(size)
        loaded.preprocess = Preprocess(resize=size, crop=size, resize_mode="exact")
        loaded.preprocess_source = "assumed from config.image_size and ImageNet's mean and std"
        why = ("has no preprocessor_config.json" if not (path / "preprocessor_config.json").is_file() else
               f"has an image processor auditor cannot reproduce ({first_line(error)})")
        loaded.notes.append(f"{path.name} {why}; preprocessing assumed: {loaded.preprocess.describe()}. Set "
                            f"--input-size/--mean/--std if the model expects otherwise.")
        return
    loaded.notes.extend(notes)
    loaded.preprocess_source = f"{type(processor).__name__} from preprocessor_config.json"
    differs = compare_preprocessing(loaded.preprocess, lambda image: processor(
        images=image, return_tensors="pt")["pixel_values"][0], "the image processor's own output")
    if differs:
        loaded.notes.append(f"Preprocessing: {differs}.")
