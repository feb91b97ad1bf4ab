"""The attribution section and the CAM section's --cam-methods: what they draw, record and say."""

from __future__ import annotations

import pytest
import torch
from fixtures_models import tiny, tiny_swin, tiny_vit
from toolkit import CHEAP, audit, audit_section
from torch import nn

from auditor.declarations import ATTRIBUTION_METHODS, CAM_METHODS, Attribution, ClassActivationMaps
from auditor.methods import METHODS, family, passes


def _option(technique: type, name: str):
    return next(option for option in technique.options if option.name == name)


def test_declared_method_keys_are_the_tables():
    """declarations keeps torch-free copies of the keys for --help: they must be the table's, in its order."""
    assert CAM_METHODS == tuple(method.key for method in family("cam"))
    assert ATTRIBUTION_METHODS == tuple(method.key for method in family("attribution"))


def test_method_lists_parse_all_and_refuse_unknown_keys():
    option = _option(ClassActivationMaps, "cam-methods")
    assert option.parse("all") == CAM_METHODS
    assert option.parse("score-cam, grad-cam,score-cam") == ("score-cam", "grad-cam")
    with pytest.raises(ValueError, match="'gradcam' is not among cam, grad-cam"):
        option.parse("grad-cam,gradcam")
    assert _option(Attribution, "attribution-methods").parse(["rise"]) == ("rise",)


def test_cam_section_draws_the_chosen_methods_and_every_method_on_the_first_image():
    section = audit_section(tiny(), "cam", **CHEAP, cam_methods=("grad-cam", "eigen-cam"))
    assert section.metrics["methods"] == ["grad-cam", "eigen-cam"]
    assert section.metrics["first_image_methods"] == list(CAM_METHODS)  # --cam-showcase: all, Score-CAM too
    first, second = section.metrics["images"]
    assert set(first["classes"][0]["peak_xy"]) == set(CAM_METHODS)
    assert any(note.startswith("Score-CAM is drawn on the first image only") for note in section.notes)
    assert set(second["classes"][0]["peak_xy"]) == {"grad-cam", "eigen-cam"}
    peaks = next(block for block in section.blocks if getattr(block, "key", "") == "cam-peaks")
    assert peaks.columns[3:] == ["Grad-CAM", "Eigen-CAM"]
    fewer = audit_section(tiny(), "cam", **CHEAP, cam_methods=("grad-cam",), cam_showcase=("cam", "grad-cam"))
    assert fewer.metrics["first_image_methods"] == ["cam", "grad-cam"]
    assert not any("Score-CAM" in note for note in fewer.notes)


def test_attribution_section_maps_costs_and_settings():
    settings = {**CHEAP, "occlusion_window": 8, "occlusion_stride": 8}
    section = audit_section(tiny(), "attribution", **settings)
    metrics = section.metrics
    assert metrics["methods"] == ["integrated-gradients", "smoothgrad", "occlusion", "rise"]
    assert metrics["unavailable"] == {}
    used = metrics["settings"]
    assert (used["ig_steps"], used["smoothgrad_samples"], used["rise_masks"]) == (2, 2, 8)
    assert passes("occlusion", used) == 4 * 4 + 1  # 32 px input, 8 px windows every 8 px, and the image itself
    cost = next(block for block in section.blocks if getattr(block, "key", "") == "attribution-cost")
    assert cost.rows == [["Integrated Gradients", 2], ["SmoothGrad", 2], ["Occlusion", 17], ["RISE", 8]]
    (image,) = metrics["images"]
    assert set(image["peak_xy"]) == set(metrics["methods"])
    assert any(getattr(block, "key", "") == "attribution-maps" for block in section.blocks)


class _Detached(nn.Module):
    """Reads its input under no_grad: no input gradient exists, though every forward pass works."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


def test_torchscript_model_without_gradients_gets_occlusion_and_rise_and_says_why():
    scripted = torch.jit.script(_Detached().eval())
    section = audit_section(scripted, "attribution", **CHEAP, attribution_methods=ATTRIBUTION_METHODS)
    assert section.metrics["methods"] == ["occlusion", "rise"]
    assert set(section.metrics["unavailable"]) == {"integrated-gradients", "smoothgrad", "smoothgrad-squared"}
    notes = " ".join(section.notes)
    assert "Integrated Gradients does not apply" in notes
    assert "TorchScript" in notes and "Occlusion and RISE need no gradients" in notes
    assert all(METHODS[key].family == "attribution" for key in section.metrics["unavailable"])


@pytest.mark.parametrize("factory", [tiny_vit, tiny_swin])
def test_every_attribution_method_runs_on_transformers_and_is_scored(factory) -> None:
    report = audit(factory(), ("attribution", "trust"), **CHEAP, attribution_methods=ATTRIBUTION_METHODS)
    trust, attribution = report.sections
    assert trust.error is None and attribution.error is None, (trust.error_detail, attribution.error_detail)
    assert attribution.metrics["methods"] == list(ATTRIBUTION_METHODS)
    assert set(ATTRIBUTION_METHODS) <= set(trust.metrics["methods"])


def test_an_occlusion_window_larger_than_the_input_is_the_whole_input() -> None:
    from auditor.methods import attribution_settings

    declared = {option.key: option.default for option in Attribution.options}
    used = attribution_settings({**declared, "occlusion_window": 64, "occlusion_stride": 80}, 16, 0, (28, 40))
    assert (used["occlusion_window"], used["occlusion_stride"]) == (28, 28)
    # captum's placement: ceil((side - window) / stride) + 1 windows a side, the last one cut off; and the image
    assert passes("occlusion", used) == 1 * 2 + 1
