"""The trust section: the published sanity result on the default model, the report.json shape, boxes."""

from __future__ import annotations

import json

import pytest
import torch

from auditor import load_images, load_model
from auditor import methods as table
from tests.fixtures_models import tiny
from tests.toolkit import audit, audit_section

# the default rows: --cam-methods' and --attribution-methods' defaults, every gradient method and product
METHOD_KEYS = {"cam", "grad-cam", "grad-cam++", "layer-cam", "guided-backprop", "deconvnet", "guided-grad-cam",
               "gradient", "integrated-gradients", "smoothgrad", "occlusion", "rise"}


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
    import auditor.techniques.saliency as saliency_module

    calls: list[int] = []
    original = saliency_module.cam_maps
    monkeypatch.setattr(saliency_module, "cam_maps", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    report = audit(tiny(6), ("cam", "trust", "reconstructions", "attribution"), size=64, trust_steps=2,
                   trust_images=2, ig_steps=2, smoothgrad_samples=2, rise_masks=8)
    assert [s.technique for s in report.sections] == ["trust", "reconstructions", "cam", "attribution"]
    assert all(s.error is None for s in report.sections), [s.error_detail for s in report.sections]
    # trained maps came from the CAM section: only the 2 randomised steps and the other class call cam_maps,
    # once per --batch-size block of images (the unit of work spread over torchrun's ranks): both images at once
    assert len(calls) == 3
    trust = report.sections[0]
    assert set(trust.metrics["methods"]) == METHOD_KEYS
    assert trust.metrics["cost"]["cascade_steps"] == 2 and trust.metrics["images"] == ["astronaut.png", "camera.png"]
    recommended = trust.metrics["recommended"]  # quoted in the text, and marked in the table
    assert recommended["why"] in trust.text
    if recommended["method"] is not None:
        assert recommended["method"] in trust.metrics["methods"]
        assert f"{table.METHODS[recommended['method']].name} (recommended)" in \
            [row[0].replace(" *", "") for row in trust.blocks[0].rows]
    # the many-pass methods are randomised at the costly steps only (default 1: the middle, the 2nd of 2 here)
    assert trust.metrics["methods"]["rise"]["randomization"]["computed_steps"] == [1]
    assert trust.metrics["methods"]["gradient"]["randomization"]["computed_steps"] == [0, 1]


@pytest.mark.parametrize(("steps", "costly", "chosen"), [(6, 1, [3]), (6, 2, [1, 4]), (6, 3, [1, 3, 5]),
                                                          (6, 6, [0, 1, 2, 3, 4, 5]), (6, 9, [0, 1, 2, 3, 4, 5]),
                                                          (1, 1, [0])])
def test_costly_steps_sit_at_the_middles_of_equal_parts_of_the_cascade(steps, costly, chosen) -> None:
    from auditor.sections.trust import costly_steps

    assert costly_steps(steps, costly) == chosen


def test_a_model_without_a_cam_head_reuses_the_cam_sections_maps_too(monkeypatch) -> None:
    """Classic CAM does not apply (the head reads a flattened map, not its mean): the trust section takes that
    reason from the CAM section instead of running cam_maps on the trained model again."""
    import auditor.techniques.saliency as saliency_module

    calls: list[int] = []
    original = saliency_module.cam_maps
    monkeypatch.setattr(saliency_module, "cam_maps", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, 2, 1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 16 * 16, 3)).eval()
    report = audit(model, ("cam", "trust"), trust_steps=2, trust_images=2)
    assert all(s.error is None for s in report.sections), [s.error_detail for s in report.sections]
    assert len(calls) == 3  # the 2 randomised steps and the other class, on the block of both images
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


def test_the_cascade_computes_each_method_at_its_own_steps(monkeypatch) -> None:
    """A costly method at a subset of the randomised copies: NaN at the others, the same numbers where
    computed, and the verdict averages the computed steps only."""
    from types import SimpleNamespace

    import auditor.sections.trust as trust_module
    from auditor.inputs.models.heads import SOFTMAX
    from auditor.nn.restore import audit_mode
    from auditor.techniques.saliency import foldable_but_layer, saliency
    from auditor.techniques.trust.randomization import sanity_verdict

    model = tiny(6)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    top = torch.tensor([0, 1])
    keys = ["grad-cam", "guided-backprop", "gradient"]
    original = saliency(model, x, top, "features.5", "logit", methods=keys)
    ctx = SimpleNamespace(module=model, options=SimpleNamespace(seed=0), head=SOFTMAX,
                          progress=SimpleNamespace(each=lambda items, *a, **k: items),
                          spread_batches=lambda count, compute: [compute(slice(0, count))])
    with audit_mode(model):
        trained = foldable_but_layer(model, "features.5", x[:1])
    assert trained.norms  # the copies run folded, as in the section
    labels, full, _, seconds, other = trust_module.cascade(
        ctx, x, top, "features.5", "logit", original, 3, {}, trained=trained,
        other={"gradient": original.maps["gradient"]})
    assert other == {"gradient": pytest.approx(1.0)}  # the same maps: rank correlation 1
    assert len(seconds) == 3 and all(t > 0 for t in seconds)
    asked: list[list[str]] = []
    engine = trust_module.saliency
    monkeypatch.setattr(trust_module, "saliency", lambda *a, **k: asked.append(list(k["methods"])) or engine(*a, **k))
    again, scores, maps, _, _ = trust_module.cascade(
        ctx, x, top, "features.5", "logit", original, 3, {}, trained=trained,
        steps_for=lambda m: {0, 2} if m == "gradient" else range(3))
    assert again == labels and asked == [keys, keys[:2], keys]  # a call per step, for the block of both images
    assert "gradient" not in maps[1] and "gradient" in maps[2]
    for method in keys:
        for metric in ("spearman", "ssim"):
            curve = scores[method][metric]
            assert curve.shape == (3, 2)
            computed = [0, 2] if method == "gradient" else [0, 1, 2]
            assert torch.isnan(curve).any(dim=1).tolist() == [i not in computed for i in range(3)]
            torch.testing.assert_close(curve[computed], full[method][metric][computed], rtol=0, atol=1e-6)
    assert sanity_verdict(scores["gradient"]["spearman"]) == sanity_verdict(full["gradient"]["spearman"][[0, 2]])
    with pytest.raises(ValueError, match="gradient computed at none"):
        trust_module.cascade(ctx, x, top, "features.5", "logit", original, 3, {}, trained=trained,
                             steps_for=lambda m: () if m == "gradient" else range(3))
