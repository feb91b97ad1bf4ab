"""Every torchvision classifier audits with every technique (issue 9, coverage).

One test per name in torchvision.models.list_models(module=torchvision.models): random weights, the
smallest input the architecture accepts, two bundled photos, every registered technique at its
cheapest settings. Every section must come back without an error (a technique that does not apply
says why in its section instead), and the model must come back exactly as given.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from auditor import RunOptions, load_images, load_model, run_audit
from auditor.inputs.images import BUNDLED_PHOTOS
from auditor.inputs.models import state_dict_sha256

MODELS = torchvision.models.list_models(module=torchvision.models)

# The smallest square input each architecture runs on: 32 px unless listed (alexnet's pooling needs 63,
# inception_v3's stem 75). ViTs are built for 2 x 2 patches, MaxViT below for 64 px.
INPUT_SIZES = {"alexnet": 64, "inception_v3": 75, "maxvit_t": 64}

# Measured at 10 s or more each (2 CPU cores shared with other jobs; vit_h_14 99 s, regnet_y_128gf 56 s,
# the rest 10-34 s; the other 64 models 2-9 s, 5 on average, the whole sweep 12 min there).
HEAVY = {"convnext_large", "efficientnet_b5", "efficientnet_b6", "efficientnet_v2_l", "regnet_x_32gf", "regnet_y_32gf",
         "regnet_y_128gf", "resnext101_32x8d", "resnext101_64x4d", "swin_b", "swin_v2_b", "swin_v2_s", "vgg11",
         "vit_h_14", "vit_l_16", "vit_l_32"}

SETTINGS = {"max_steps": 2, "max_size": 32, "max_channels": (0, 1), "max_exemplars": 1, "trust_steps": 1,
            "trust_images": 1, "feature_channels": 4, "recon_channels": 1, "kernel_count": 8, "cam_top_k": 1}


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


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny inputs gain nothing from more, and on shared cores they thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(Path(BUNDLED_PHOTOS) / name, folder / name)
    return folder


def model_state(module: nn.Module) -> tuple[list[bool], list[bool], int]:
    """Training flags, requires_grad flags and the number of hooks: with the weights, what must not change."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())
    return [m.training for m in module.modules()], [p.requires_grad for p in module.parameters()], hooks


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS])
def test_every_technique_completes(name: str, photos: Path) -> None:
    module, size = build(name)
    before = model_state(module)
    model = load_model(module, input_size=size)
    images = load_images(photos, model.preprocess, model.class_names)
    report = run_audit(model, images, RunOptions(device="cpu", gallery_images=1, settings=SETTINGS))
    failed = {s.technique: s.error_detail for s in report.sections if s.error is not None}
    assert not failed, "\n\n".join(f"{technique}:\n{detail}" for technique, detail in failed.items())
    assert len(report.sections) >= 8  # predictions, trust, architecture, kernels, feature maps, recon, cam, max
    assert model_state(module) == before
    assert state_dict_sha256(module) == model.sha256  # load_model hashed the weights before the audit
