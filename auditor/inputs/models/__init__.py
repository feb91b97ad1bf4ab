"""Turn a model spec into a LoadedModel: one module per source, `load_model` the one entry point.

- builtin: EfficientNet-Lite0, the default
- torchvision_models: torchvision names, their weights or a state dict file (fine-tuned heads rebuilt)
- timm_models: `timm:NAME` with --weights FILE, and folders in timm's hub layout
- huggingface: folders written by save_pretrained
- files: TorchScript, pickled modules (--trust-pickle), file.py:factory and package.module:factory
- checkpoints: reading weights files (safetensors, torch.load(weights_only=True)), wrappers, key prefixes, heads
- outputs: the adapter that makes tuple, dict and `.logits` outputs look like logits to every technique
- loaded: LoadedModel and the hashes; labels: --labels files

Loading never executes pickled code unless the user passes trust_pickle: every torch.load uses
weights_only=True otherwise, and no folder's own code is run (no trust_remote_code).
"""

from auditor.inputs.models.builtin import DEFAULT_MODEL, LITE0_PREPROCESS
from auditor.inputs.models.labels import read_labels
from auditor.inputs.models.loaded import (
    ASSUMED_PREPROCESS,
    RANDOM_WEIGHTS,
    LoadedModel,
    file_sha256,
    imagenet_class_names,
    state_dict_sha256,
)
from auditor.inputs.models.loading import load_model
from auditor.inputs.models.outputs import LogitsAdapter, unwrap

__all__ = [
    "ASSUMED_PREPROCESS",
    "DEFAULT_MODEL",
    "LITE0_PREPROCESS",
    "RANDOM_WEIGHTS",
    "LoadedModel",
    "LogitsAdapter",
    "file_sha256",
    "imagenet_class_names",
    "load_model",
    "read_labels",
    "state_dict_sha256",
    "unwrap",
]
