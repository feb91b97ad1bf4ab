"""Every torchvision classifier audits with every technique (issue 9, coverage).

One test per name in torchvision.models.list_models(module=torchvision.models): random weights, the
smallest input the architecture accepts, two bundled photos, every registered technique at its
cheapest settings. Every section must come back without an error (a technique that does not apply
says why in its section instead), and the model must come back exactly as given.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from auditor import load_model
from auditor.inputs.images import BUNDLED_PHOTOS
from auditor.inputs.models import state_dict_sha256
from tests.toolkit import assert_unchanged, audit, snapshot

MODELS = torchvision.models.list_models(module=torchvision.models)

# The smallest square input each architecture runs on: 32 px unless listed (alexnet's pooling needs 63,
# inception_v3's stem 75). ViTs are built for 2 x 2 patches, MaxViT below for 64 px.
INPUT_SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 64}

# The whole sweep is slow: 80 models, 16 min on 2 CPU cores shared with other jobs (11 min of CPU time;
# regnet_y_128gf 120 s and vit_h_14 109 s, the trust section most of it; most models 2-10 s).
# `pytest -m "not slow"` leaves it out; scripts/test.sh runs it.
pytestmark = pytest.mark.slow

SETTINGS = {"max_steps": 2, "max_size": 32, "max_channels": (0, 1), "max_exemplars": 1, "trust_steps": 1,
            "trust_images": 1, "feature_channels": 4, "recon_channels": 1, "kernel_count": 8, "cam_top_k": 1,
            "cam_showcase": ("grad-cam",)}  # no Score-CAM: a pass per channel on ~80 architectures


def build(name: str) -> tuple[nn.Module, int]:
    """The architecture with seeded random weights, and the input size to audit it at."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name.startswith("vit_"):  # torchvision's ViTs take any image size that is a multiple of the patch
            patch = int(name.rsplit("_", 1)[1])
            return torchvision.models.get_model(name, weights=None, image_size=2 * patch), 2 * patch
        if name == "maxvit_t":  # maxvit_t's stages with 2 x 2 partitions, so that 64 px divides into them
            module = torchvision.models.MaxVit(input_size=(64, 64), stem_channels=64, partition_size=2,
                                               block_channels=[64, 128, 256, 512], block_layers=[2, 2, 5, 2],
                                               head_dim=32, stochastic_depth_prob=0.2)
        else:
            extra = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
            module = torchvision.models.get_model(name, weights=None, **extra)
        for layer in module.modules():  # ViT heads start at zero: no class would depend on anything
            if isinstance(layer, nn.Linear) and not layer.weight.any():
                nn.init.normal_(layer.weight, std=0.01)
    return module, INPUT_SIZES.get(name, 32)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(Path(BUNDLED_PHOTOS) / name, folder / name)
    return folder


@pytest.mark.parametrize("name", MODELS)
def test_every_technique_completes(name: str, photos: Path) -> None:
    module, size = build(name)
    before = snapshot(module, values=False)  # the weights are too many to copy: their hash is checked
    model = load_model(module, input_size=size)
    # the attribution methods read only the input gradient or the output: tests/test_attribution_section.py
    # runs them on a CNN, a ViT and a Swin; here they would double the sweep's time
    report = audit(model, images=photos, gallery_images=1, skip=("attribution",), **SETTINGS)
    failed = {s.technique: s.error_detail for s in report.sections if s.error is not None}
    assert not failed, "\n\n".join(f"{technique}:\n{detail}" for technique, detail in failed.items())
    assert len(report.sections) >= 8  # predictions, trust, architecture, kernels, feature maps, recon, cam, max
    assert_unchanged(module, before)
    assert state_dict_sha256(module) == model.sha256  # load_model hashed the weights before the audit
