"""The trust section: the published sanity result on the default model, the report.json shape, boxes."""

from __future__ import annotations

import json

import pytest
import torch

from auditor import load_images, load_model
from tests.fixtures_models import tiny
from tests.toolkit import audit, audit_section

METHOD_KEYS = {"cam", "grad-cam", "grad-cam++", "guided-backprop", "deconvnet", "guided-grad-cam", "gradient"}


@pytest.mark.slow  # the default report (conftest)
def test_default_model_reproduces_the_published_sanity_result(default_report) -> None:
    """Adebayo et al.: Grad-CAM depends on the weights, guided backprop barely does; Grad-CAM beats a random map."""
    report, written = default_report
    trust = next(s for s in report.sections if s.technique == "trust")
    assert trust.error is None, trust.error_detail
    methods = trust.metrics["methods"]
    assert set(methods) == METHOD_KEYS
    assert methods["grad-cam"]["randomization"]["verdict"] == "pass"
    assert methods["guided-backprop"]["randomization"]["verdict"] == "warn"
    random = trust.metrics["random_baseline"]
    assert methods["grad-cam"]["deletion_auc"] < random["deletion_auc"]
    assert methods["grad-cam"]["insertion_auc"] > random["insertion_auc"]
    sections = json.loads(written["json"].read_text())["sections"]  # report.json as written
    shape = next(s for s in sections if s["technique"] == "trust")["metrics"]
    entry = shape["methods"]["grad-cam"]
    assert entry["randomization"]["verdict"] in ("pass", "warn")
    assert len(entry["randomization"]["spearman"]) == len(entry["randomization"]["ssim"]) == 6
    assert isinstance(entry["deletion_auc"], float) and isinstance(shape["random_baseline"]["insertion_auc"], float)


def test_trust_runs_after_cam_but_is_shown_first_and_reuses_its_maps(monkeypatch) -> None:
    import auditor.sections.trust as trust_module

    calls: list[int] = []
    original = trust_module.cam_maps
    monkeypatch.setattr(trust_module, "cam_maps", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    report = audit(tiny(6), ("cam", "trust", "reconstructions"), size=64, trust_steps=2,
                   trust_images=2)
    assert [s.technique for s in report.sections] == ["trust", "reconstructions", "cam"]
    assert all(s.error is None for s in report.sections), [s.error_detail for s in report.sections]
    # trained maps came from the CAM section: only the 2 randomised steps and the other class call cam_maps
    assert len(calls) == 3
    trust = report.sections[0]
    assert set(trust.metrics["methods"]) == METHOD_KEYS
    assert trust.metrics["cost"]["cascade_steps"] == 2 and trust.metrics["images"] == ["astronaut.png", "camera.png"]


def test_a_model_without_a_cam_head_reuses_the_cam_sections_maps_too(monkeypatch) -> None:
    """Classic CAM does not apply (the head reads a flattened map, not its mean): the trust section takes that
    reason from the CAM section instead of running cam_maps on the trained model again."""
    import auditor.sections.trust as trust_module

    calls: list[int] = []
    original = trust_module.cam_maps
    monkeypatch.setattr(trust_module, "cam_maps", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 16 * 16, 3)).eval()
    report = audit(model, ("cam", "trust"), trust_steps=2, trust_images=2)
    assert all(s.error is None for s in report.sections), [s.error_detail for s in report.sections]
    assert len(calls) == 3  # the 2 randomised steps and the other class
    trust = report.sections[0]
    assert "cam" not in trust.metrics["methods"] and any(note.startswith("CAM is not scored") for note in trust.notes)


def test_boxes_give_pointing_game_and_mass(tmp_path) -> None:
    torch.manual_seed(0)
    model = load_model(tiny(6), input_size=64)
    images = load_images(None, model.preprocess)
    width, height = images.sizes[images.names.index("coffee.png")]
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"image,class,x0,y0,x1,y1\ncoffee.png,2,0,0,{width},{height}\nunknown.png,1,0,0,5,5\n")
    trust = audit_section(model, "trust", images=images, trust_steps=1, trust_images=1,
                          boxes=str(boxes))
    assert trust.error is None, trust.error_detail
    for method in ("grad-cam", "gradient"):
        entry = trust.metrics["methods"][method]
        assert entry["pointing_accuracy"] == 1.0 and entry["mass_inside"] == pytest.approx(1.0)  # box = image
        assert entry["boxes"] == 1
    assert "pointing" in trust.blocks[0].columns


def test_a_partly_torchscript_model_scores_guided_backprop_on_every_randomised_copy() -> None:
    """One rule for 'plain gradient' (no rectifier seen at all): the reconstructions section shares the
    trained model's guided backprop of a partly TorchScript model, and each randomised copy's map is
    computed under the same rule, not dropped and compared with an empty map."""
    module = tiny()
    module.features[0] = torch.jit.script(module.features[0])
    report = audit(module, ("reconstructions", "trust"), size=32, trust_steps=2, trust_images=2,
                   recon_channels=1)
    trust = next(s for s in report.sections if s.technique == "trust")
    assert trust.error is None, trust.error_detail
    curve = trust.metrics["methods"]["guided-backprop"]["randomization"]["spearman"]
    assert any(value != 0.0 for value in curve)  # an empty map would give exactly 0 at every step
