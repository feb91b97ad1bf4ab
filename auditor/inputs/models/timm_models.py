"""timm models: `timm:NAME` (built with pretrained=False, weights from --weights) and folders in timm's hub
layout (config.json with `architecture`, model.safetensors or pytorch_model.bin). Nothing is downloaded.
Preprocessing comes from the model's pretrained config (timm.data.resolve_data_config)."""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.models.checkpoints import (
    factory_hint,
    fit_architecture,
    record_rebuild,
    weights_description,
)
from auditor.inputs.models.labels import names_by_index
from auditor.inputs.models.loaded import (
    RANDOM_WEIGHTS,
    LoadedModel,
    file_sha256,
    first_line,
    require,
)
from auditor.inputs.preprocess import (
    INTERPOLATIONS,
    Preprocess,
    compare_preprocessing,
)

PREFIX = "timm:"
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")


def load_timm_name(spec: str, weights: str | None) -> LoadedModel:
    timm = require("timm", "timm", spec)
    name = spec[len(PREFIX):].strip()
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        raise AuditorError(f"--model: {spec}: auditor downloads nothing; give timm:ARCHITECTURE with --weights FILE, "
                           f"or a folder in timm's hub layout (config.json and model.safetensors) as --model DIR")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise AuditorError(f"--model: timm has no architecture {name!r}.{hint}")
    if weights is None:
        raise AuditorError(f"--model {spec}: pass --weights FILE (.safetensors or .pth, the state dict you trained); "
                           f"nothing is downloaded. --weights none audits random weights")
    build = _builder(timm, spec, name, {})
    if weights.lower() == "none":
        module, description, fitted = build(), RANDOM_WEIGHTS, None
    else:
        module, fitted = _fit(build, weights, name)
        description = weights_description(fitted[0])
    return _loaded(timm, module, spec, name, description, fitted, [], "timm")


def load_timm_folder(path: Path, config: dict[str, Any]) -> LoadedModel:
    spec = str(path)
    timm = require("timm", "timm", spec)
    pretrained_cfg, name, model_args = _parse_config(config)
    weights = next((path / n for n in WEIGHTS_NAMES if (path / n).is_file()), None)
    if weights is None:
        raise AuditorError(f"--model: {path} has timm's config.json but no weights: put model.safetensors (or "
                           f"pytorch_model.bin) beside it, as timm's save_for_hf writes them")
    if not timm.is_model(name):
        raise AuditorError(f"--model: {path}/config.json names architecture {name!r}, which this timm "
                           f"({timm.__version__}) does not have")
    args = dict(model_args)
    if pretrained_cfg.get("num_classes") is not None:
        args.setdefault("num_classes", pretrained_cfg["num_classes"])
    build = _builder(timm, spec, name, args, pretrained_cfg)
    module, fitted = _fit(build, str(weights), name)
    labels = pretrained_cfg.get("label_names")
    if isinstance(labels, dict):
        labels = names_by_index(labels)
    loaded = _loaded(timm, module, spec, name, f"timm folder {path.name} ({weights.name})", fitted,
                     [str(v) for v in labels or []], "timm")
    if model_args:
        loaded.checkpoint["model_args"] = dict(model_args)
    loaded.file_sha256["config.json"] = file_sha256(path / "config.json")
    return loaded


def _parse_config(config: dict[str, Any]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """timm's hub config.json, as timm.models._hub reads it: (pretrained_cfg, architecture, model_args)."""
    config = dict(config)
    if "pretrained_cfg" not in config:  # the legacy single-dict layout
        pretrained_cfg = {k: v for k, v in config.items() if k not in ("architecture", "num_features")}
        if "labels" in pretrained_cfg:
            pretrained_cfg["label_names"] = pretrained_cfg.pop("labels")
    else:
        pretrained_cfg = dict(config["pretrained_cfg"])
    for key in ("num_classes", "label_names", "label_descriptions"):
        if key in config:
            pretrained_cfg[key] = config[key]
    model_args = dict(config.get("model_args") or {})
    # as timm's _parse_model_cfg: the reconstruction arguments describe the saved weights' input
    if model_args.get("dynamic_img_size") or model_args.get("strict_img_size") is False:
        pretrained_cfg["fixed_input_size"] = False
    input_size = tuple(pretrained_cfg.get("input_size") or (3, 224, 224))
    if model_args.get("in_chans") is not None:
        input_size = (model_args["in_chans"], *input_size[1:])
    if model_args.get("img_size") is not None and pretrained_cfg.get("fixed_input_size", False):
        size = model_args["img_size"]
        input_size = (input_size[0], *((size, size) if isinstance(size, int) else tuple(size)))
    pretrained_cfg["input_size"] = input_size
    return pretrained_cfg, str(config["architecture"]), model_args


def _builder(timm: Any, spec: str, name: str, base: dict[str, Any], pretrained_cfg: dict[str, Any] | None = None):
    def build(**args: Any) -> nn.Module:
        try:
            module = timm.create_model(name, pretrained=False, **{**base, **args})
        except Exception as error:  # a model_args entry this architecture does not take, ...
            raise AuditorError(f"--model: timm could not build {name} ({first_line(error)})") from None
        if pretrained_cfg is not None:  # the folder's preprocessing, class names and head names
            module.pretrained_cfg = {**module.pretrained_cfg, **pretrained_cfg}
        return module

    return build


def _fit(build: Any, weights: str, name: str) -> tuple[nn.Module, tuple[Any, dict[str, Any], list[str]]]:
    default = build()
    cfg = getattr(default, "pretrained_cfg", {}) or {}
    classifier = cfg.get("classifier")
    heads = [classifier] if isinstance(classifier, str) else list(classifier or [])
    present = dict(default.named_modules())
    heads = [h for h in heads if h in present] or None
    first_conv = cfg.get("first_conv")
    first_conv = first_conv if isinstance(first_conv, str) else None
    module, result, extra, notes = fit_architecture(
        lambda **args: default if not args else build(**args), weights, f"timm {name}",
        default_classes=getattr(default, "num_classes", None), heads=heads,
        channels=("in_chans", first_conv) if first_conv else None,
        hint=lambda head: factory_hint(f'timm.create_model("{name}", pretrained=False, num_classes=...)', head),
    )
    return module, (result, extra, notes)


def timm_preprocess(config: dict[str, Any]) -> tuple[Preprocess, list[str]]:
    """Preprocess for a resolved timm data config (input_size, interpolation, crop_pct, crop_mode, mean, std),
    as timm.data.transforms_imagenet_eval builds it; and notes where it can only be approximated."""
    notes = []
    _, height, width = config["input_size"]
    crop_pct = config.get("crop_pct") or 0.875
    mode = config.get("crop_mode") or "center"
    interpolation = config.get("interpolation") or "bilinear"
    if interpolation not in INTERPOLATIONS:
        notes.append(f"timm's interpolation {interpolation!r} is taken as bilinear.")
        interpolation = "bilinear"
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if mode == "border":
        notes.append("timm's crop mode 'border' (pad to the crop) is approximated by a center crop.")
    if mode == "squash":
        resize: Any = scale
    else:
        resize = scale[0] if scale[0] == scale[1] else scale
    preprocess = Preprocess(resize=resize, crop=(height, width), mean=tuple(config["mean"]), std=tuple(config["std"]),
                            interpolation=interpolation, resize_mode="exact" if mode == "squash" else "shortest-edge")
    return preprocess, notes


def _loaded(timm: Any, module: nn.Module, spec: str, name: str, description: str, fitted: Any,
            class_names: list[str], kind: str) -> LoadedModel:
    config = timm.data.resolve_data_config({}, model=module)
    preprocess, notes = timm_preprocess(config)
    module.eval()
    loaded = LoadedModel(module, preprocess, class_names, name, spec, kind, description,
                         preprocess_source=f"timm pretrained config ({_data_config_text(config)})")
    if fitted is not None:
        record_rebuild(loaded, fitted)
    loaded.notes.extend(notes)
    differs = compare_preprocessing(preprocess, lambda image: timm.data.create_transform(**config, is_training=False)(
        image), "timm's own transform")
    if differs:
        loaded.notes.append(f"Preprocessing: {differs}.")
    return loaded


def _data_config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in config.items())
