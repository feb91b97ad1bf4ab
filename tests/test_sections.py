"""The kernels, feature-map and reconstruction sections on small models (48 px inputs and two gallery images
unless said): figures, captions, metrics, notes."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from auditor import load_model
from auditor.document import Figure, Section
from tests.fixtures_models import tiny, tiny_vit
from tests.toolkit import audit_section

SMALL = {"size": 48, "gallery_images": 2}  # 48 px inputs, two gallery images


def figures(section: Section) -> list[Figure]:
    return [b for b in section.blocks if isinstance(b, Figure)]


def test_kernels_first_layer_in_colour_then_signed_slices_with_a_colour_bar() -> None:
    section = audit_section(tiny(), "kernels", **SMALL)
    assert section.error is None
    assert [layer["layer"] for layer in section.metrics["layers"]] == ["features.0", "features.3"]
    first, second = figures(section)
    assert "features.0 (weights 8×3×3×3): all 8 filters" in first.caption and "red, green and blue" in first.caption
    assert "diverging scale" in second.caption and section.metrics["layers"][1]["kind"] == "signed"
    limit = section.metrics["layers"][1]["limit"]
    weight = tiny().features[3].weight
    assert limit == pytest.approx(float(weight.detach().abs().flatten(2).gather(  # the largest |w| among drawn slices
        1, weight.detach().flatten(2).norm(dim=2).argmax(1)[:, None, None].expand(-1, 1, 9)).abs().max()))
    grid = Image.open(io.BytesIO(first.data))
    assert grid.width == 8 * (36 + 2) + 2  # eight 36-px tiles in one row


def test_kernel_count_limits_the_filters_drawn() -> None:
    section = audit_section(tiny(), "kernels", **SMALL, kernel_layers="features.3", kernel_count=5)
    (figure,) = figures(section)
    assert "the first 5 of 16 filters" in figure.caption


def test_a_bad_layer_or_class_stops_the_run_before_any_technique_with_close_names() -> None:
    from auditor.errors import AuditorError

    with pytest.raises(AuditorError, match="--kernel-layers: TinyNet has no layer 'features.9'; close names: "
                                           "features.5"):
        audit_section(tiny(), "kernels", **SMALL, kernel_layers="features.9")
    with pytest.raises(AuditorError, match="--cam-classes: class 7 is out of range; the model has 5 classes"):
        audit_section(tiny(), "kernels", **SMALL, cam_classes="7")


def test_feature_maps_one_figure_per_layer_with_the_strongest_channels() -> None:
    section = audit_section(tiny(), "feature-maps", **SMALL, feature_layers="features.2,features.5", feature_channels=4)
    assert section.error is None
    assert [f.key for f in figures(section)] == ["feature-maps-features.2", "feature-maps-features.5"]
    layer = section.metrics["layers"]["features.5"]
    assert layer["shape"] == [16, 12, 12] and len(layer["strongest"]) == 2 and len(layer["strongest"][0]) == 4
    assert section.metrics["images"] == ["chelsea.png", "camera.png"]  # the gallery: least, then most confident


def test_feature_maps_refuse_a_layer_without_a_map() -> None:
    section = audit_section(tiny(), "feature-maps", **SMALL, feature_layers="classifier")
    assert "--feature-layers" in section.error and "not a feature map" in section.error


class FunctionalNet(nn.Module):
    """ReLUs as functional calls, which no module hook sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_reconstructions_on_resnet18_name_class_and_channels() -> None:
    torch.manual_seed(0)
    resnet18 = torchvision.models.resnet18(num_classes=10)
    section = audit_section(resnet18, "reconstructions", size=64, gallery_images=2, recon_channels=2)
    assert section.error is None and not section.notes
    assert section.metrics["layer"] == "layer3"  # two thirds up conv1, layer1..layer4
    assert [len(i["channels"]) for i in section.metrics["images"]] == [2, 2]
    assert "guided backprop (top) and deconvnet (bottom)" in figures(section)[0].caption


def test_reconstructions_say_when_the_rectifiers_cannot_be_seen() -> None:
    torch.manual_seed(0)
    scripted = torch.jit.script(FunctionalNet().eval())
    section = audit_section(scripted, "reconstructions", **SMALL, recon_channels=1)
    assert section.error is None
    assert section.notes and "plain input gradient" in section.notes[0]
    assert "TorchScript model accepts no hooks" in section.notes[1]
    assert "the plain input gradient (see the note)" in figures(section)[0].caption


def test_reconstructions_handle_functional_relu_without_a_note() -> None:
    torch.manual_seed(0)
    section = audit_section(FunctionalNet().eval(), "reconstructions", **SMALL, recon_layer="conv2", recon_channels=1)
    assert section.error is None and not section.notes


def test_cam_classes_by_name_or_index_and_clear_errors() -> None:
    from auditor.errors import AuditorError
    from auditor.option_checks import resolve_classes

    names = ["tabby cat", "tiger_cat", "Egyptian cat"]
    assert resolve_classes(("Tiger Cat", "2", "tabby_cat", "2"), names) == [1, 2, 0]
    with pytest.raises(AuditorError, match=r"--cam-classes: class 3 is out of range; the model has 3 classes"):
        resolve_classes(("3",), names)
    with pytest.raises(AuditorError, match="no class named 'tigre cat'; close names: tiger cat"):
        resolve_classes(("tigre cat",), names)


def test_cam_section_galleries_on_a_labelled_folder(tmp_path) -> None:
    """Labels give the true class a column and misclassified images their own gallery; vgg has no GAP head."""
    from auditor.inputs.images import BUNDLED_PHOTOS

    for name, folder in (("chelsea.png", "class 1"), ("coffee.png", "class 2")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes((BUNDLED_PHOTOS / name).read_bytes())
    torch.manual_seed(0)
    no_pooling = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Flatten(),
                               nn.Linear(8 * 16 * 16, 4))  # a head that reads every location, not their mean
    model = load_model(no_pooling.eval(), input_size=64)
    model.class_names = ["class 0", "class 1", "class 2", "class 3"]
    section = audit_section(model, "cam", images=tmp_path, cam_top_k=2, cam_classes="3")
    assert section.error is None
    assert section.metrics["methods"] == ["grad-cam", "grad-cam++", "layer-cam"]
    assert section.notes and section.notes[0].startswith("CAM does not apply")
    assert section.metrics["gallery_classes"] == ["class 3"]
    for entry, label in zip(section.metrics["images"], (1, 2)):
        indices = [c["index"] for c in entry["classes"]]
        assert label in indices and 3 in indices  # the true class and the chosen one join the top 2
    keys = [b.key for b in section.blocks]
    assert keys[:2] == ["cam-class 1/chelsea.png", "cam-class 2/coffee.png"] and "cam-per-class" in keys
    assert ("cam-misclassified" in keys) == any(
        int(report_top) != label for report_top, label in zip(
            [section.metrics["images"][0]["classes"][0]["index"], section.metrics["images"][1]["classes"][0]["index"]],
            (1, 2)))


def test_cam_section_says_why_it_does_not_apply_and_when_guided_backprop_is_the_plain_gradient() -> None:
    zero_head = tiny_vit()
    nn.init.zeros_(zero_head.heads.head.weight)  # torchvision's untrained ViT: no score depends on the image
    section = audit_section(zero_head, "cam", size=32, gallery_images=2)
    assert section.error is None and section.blocks == []
    assert section.notes == [("The CAM family does not apply to VisionTransformer: --cam-layer: the "
                              "class scores depend on no spatial layer (every gradient is zero, as with an all-zero "
                              "head); give the layer with --cam-layer.")]
    section = audit_section(tiny_vit(), "cam", size=32, gallery_images=2)  # GELU only: no rectifier to guide
    guided = next(f for f in figures(section) if f.key == "guided-grad-cam")
    assert section.error is None and "multiplied pixel by pixel with plain gradient" in guided.caption
    assert any(n.startswith("Guided Grad-CAM multiplies by the plain input gradient") for n in section.notes)
