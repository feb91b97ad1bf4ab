"""The one table of saliency methods (auditor.methods), Guided Grad-CAM, the rectifier-warning capture and
the typed shared results: a method is one function and one entry, read by cam_maps, the CAM section, the
trust section and report.json."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from auditor import Report
from auditor import methods as table
from auditor.declarations import ClassActivationMaps
from auditor.shared import CamShared, GradientShared, SharedResults
from auditor.techniques import cam
from auditor.techniques.reconstructions import (
    NoRectifierWarning,
    RectifierNotSeenWarning,
    gradient_saliency,
    guided_backprop,
    rectifier_warnings,
)
from tests.fixtures_models import tiny
from tests.toolkit import audit

CAM_KEYS = ["cam", "grad-cam", "grad-cam++", "score-cam", "layer-cam", "xgrad-cam", "hires-cam", "eigen-cam"]
ATTRIBUTION_KEYS = ["integrated-gradients", "smoothgrad", "smoothgrad-squared", "occlusion", "rise"]
KEYS = [*CAM_KEYS, "guided-backprop", "deconvnet", "guided-grad-cam", "gradient", *ATTRIBUTION_KEYS]
# what the trust section scores by default: --cam-methods' and --attribution-methods' defaults, every gradient
# method and product
TRUSTED = ["cam", "grad-cam", "grad-cam++", "layer-cam", "guided-backprop", "deconvnet", "guided-grad-cam",
           "gradient", "integrated-gradients", "smoothgrad", "occlusion", "rise"]


def _gelu_model(size: int = 4) -> nn.Module:
    """No rectifier anywhere: guided backprop and deconvnet reduce to the plain gradient (size x size inputs)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, 6), nn.GELU(), nn.Linear(6, 3)).eval()


# ---------------------------------------------------------------- the table

def test_the_table_holds_every_method_once_in_report_order() -> None:
    assert list(table.METHODS) == KEYS  # the trust section's rows, legends and report.json keys, in this order
    assert [m.key for m in table.cam_family()] == list(cam.METHODS) == CAM_KEYS
    assert [m.key for m in table.family("gradient")] == ["guided-backprop", "deconvnet", "gradient"]
    assert [m.key for m in table.family("attribution")] == ATTRIBUTION_KEYS
    assert {key: m.name for key, m in table.METHODS.items()} == {
        "cam": "CAM", "grad-cam": "Grad-CAM", "grad-cam++": "Grad-CAM++", "score-cam": "Score-CAM",
        "layer-cam": "LayerCAM", "xgrad-cam": "XGrad-CAM", "hires-cam": "HiResCAM", "eigen-cam": "Eigen-CAM",
        "guided-backprop": "Guided backprop", "deconvnet": "Deconvnet", "guided-grad-cam": "Guided Grad-CAM",
        "gradient": "Gradient", "integrated-gradients": "Integrated Gradients", "smoothgrad": "SmoothGrad",
        "smoothgrad-squared": "SmoothGrad²", "occlusion": "Occlusion", "rise": "RISE"}
    assert [key for key, m in table.METHODS.items() if m.many_passes] == ["score-cam", *ATTRIBUTION_KEYS]
    product = table.METHODS["guided-grad-cam"]
    assert product.family == "product" and product.reuses == ("guided-backprop", "grad-cam")
    assert product.compute is cam.guided_grad_cam_product
    assert [m.key for m in table.reusing("grad-cam")] == ["guided-grad-cam"]
    assert table.METHODS["guided-backprop"].words == "guided backprop" and table.METHODS["cam"].words == "CAM"


@pytest.mark.parametrize(("entries", "match"), [
    ((table.Method("a", "A", "cam", cam.cam_raw), table.Method("a", "B", "cam", cam.grad_cam_raw)),
     "'a' is declared twice"),
    ((table.Method("p", "P", "product", cam.guided_grad_cam_product, reuses=("later",)),), "'p' reuses"),
    ((table.Method("g", "G", "gradient", guided_backprop, reuses=("g",)),), "'g' reuses"),
    ((table.Method("p", "P", "product", cam.guided_grad_cam_product),), "'p' reuses"),
])
def test_a_table_with_a_clash_or_a_bad_reuse_fails_when_it_is_built(entries: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        table._table(*entries)


def test_one_function_and_one_entry_add_a_method_to_cam_maps_the_cam_and_trust_sections(monkeypatch) -> None:
    def abs_grad_cam_raw(inputs: cam.CamInputs) -> torch.Tensor:
        """|gradient| times the features, summed over channels: a method the table does not hold."""
        return (inputs.gradients.abs() * inputs.features[:, None]).sum(dim=2).relu()

    monkeypatch.setitem(table.METHODS, "abs-grad-cam", table.Method("abs-grad-cam", "AbsGrad-CAM", "cam",
                                                                    abs_grad_cam_raw))
    model = tiny(6)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = cam.cam_maps(model, x, torch.tensor([1, 4]), "features")
    assert list(result.maps) == [key for key in CAM_KEYS if key != "score-cam"] + ["abs-grad-cam"] and "abs-grad-cam" in cam.METHODS
    assert result.raw["abs-grad-cam"].shape == result.raw["grad-cam"].shape  # [N, K, h, w] at the layer
    assert result.maps["abs-grad-cam"].shape == (2, 1, 32, 32)

    # chosen with --cam-methods, whose torch-free choices (auditor.declarations.CAM_METHODS) list it too
    options = tuple(dataclasses.replace(o, choices=(*o.choices, "abs-grad-cam")) if o.name == "cam-methods" else o
                    for o in ClassActivationMaps.options)
    monkeypatch.setattr(ClassActivationMaps, "options", options)
    chosen = ("grad-cam", "abs-grad-cam")
    report = audit(tiny(6), ("cam", "trust"), size=32, trust_steps=1, trust_images=2, cam_methods=chosen)
    trust, cam_section = report.sections
    assert trust.error is None and cam_section.error is None, (trust.error_detail, cam_section.error_detail)
    assert cam_section.metrics["methods"] == list(chosen)
    assert cam_section.metrics["first_image_methods"] == [*CAM_KEYS, "abs-grad-cam"]  # --cam-showcase: all
    peaks = next(b for b in cam_section.blocks if getattr(b, "key", "") == "cam-peaks")
    assert peaks.columns[-1] == "AbsGrad-CAM"
    assert list(trust.metrics["methods"]) == ["grad-cam", "guided-backprop", "deconvnet", "guided-grad-cam",
                                              "gradient", "abs-grad-cam"]  # no attribution section
    assert "AbsGrad-CAM" in [row[0].split(" (")[0] for row in trust.blocks[0].rows]


# ---------------------------------------------------------------- Guided Grad-CAM

def test_guided_grad_cam_is_guided_backprop_times_the_grad_cam_map() -> None:
    model = tiny(6)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([1, 4])
    ours = cam.guided_grad_cam(model, "features", x, targets)
    hand = guided_backprop(model, x, targets) * cam.grad_cam(model, "features", x, targets)[:, None]
    assert ours.shape == (2, 3, 32, 32) and ours.abs().sum() > 0
    torch.testing.assert_close(ours, hand, rtol=0, atol=0)

    columns = torch.tensor([[1, 0], [4, 2]])
    many = cam.guided_grad_cam(model, "features", x, columns)
    assert many.shape == (2, 2, 3, 32, 32)
    for k in range(2):
        expected = guided_backprop(model, x, columns[:, k]) * cam.grad_cam(model, "features", x, columns[:, k])[:, None]
        torch.testing.assert_close(many[:, k], expected)


def test_the_product_of_results_already_at_hand_keeps_the_gradients_device_and_dtype() -> None:
    guided = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    maps = torch.rand(2, 4, 4, dtype=torch.float32)
    product = cam.guided_grad_cam_product(guided, maps)
    assert product.dtype == torch.float64 and product.shape == guided.shape
    torch.testing.assert_close(product[1, 2], guided[1, 2] * maps[1].double())


# ---------------------------------------------------------------- rectifier warnings

def test_rectifier_warnings_records_them_and_says_when_the_result_is_the_plain_gradient() -> None:
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        with rectifier_warnings() as seen:
            guided_backprop(_gelu_model(), x, torch.tensor([0, 1]))
            guided_backprop(_gelu_model(), x, torch.tensor([0, 1]))  # the same message is kept once
            warnings.warn("not ours", UserWarning, stacklevel=1)
        with rectifier_warnings() as clean:
            guided_backprop(tiny(), torch.randn(1, 3, 16, 16), torch.tensor([0]))
    assert len(seen.plain) == 1 and seen.plain[0].startswith("guided backprop: no rectifier")
    assert seen.messages == seen.plain
    assert clean.messages == [] and clean.plain == []
    assert [str(w.message) for w in outside] == ["not ours"]  # passed through; ours are not shown


def test_rectifier_warnings_keeps_partly_torchscript_results_and_restores_the_filters() -> None:
    module = tiny()
    module.features[0] = torch.jit.script(module.features[0])
    with rectifier_warnings() as seen:
        guided_backprop(module, torch.randn(1, 3, 16, 16), torch.tensor([0]))
    assert seen.messages and "part of the model is TorchScript" in seen.messages[0]
    assert seen.plain == []  # only warned: its other rectifiers were replaced

    before = (warnings.showwarning, list(warnings.filters))
    with pytest.raises(RuntimeError, match="boom"), rectifier_warnings():
        raise RuntimeError("boom")
    assert (warnings.showwarning, list(warnings.filters)) == before
    with pytest.warns(NoRectifierWarning):  # shown again outside the block
        guided_backprop(_gelu_model(), torch.randn(1, 3, 4, 4), torch.tensor([0]))
    assert issubclass(NoRectifierWarning, RectifierNotSeenWarning)


# ---------------------------------------------------------------- shared results

def test_shared_results_give_the_leading_rows_or_none() -> None:
    gradients = GradientShared([4, 1, 7], torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 2, 2))
    assert gradients.rows([4, 1]).shape == (2, 3, 2, 2) and gradients.rows([4, 1])[1].unique().item() == 1.0
    assert gradients.rows([1]) is None and gradients.rows([4, 1, 7, 2]) is None
    maps = CamShared([4, 1], "features", "logit", {"grad-cam": torch.zeros(2, 5, 5)})
    assert maps.rows([4])["grad-cam"].shape == (1, 5, 5) and maps.rows([1, 4]) is None
    empty = SharedResults()
    assert empty.cam is None and empty.gradients == {}


def _audit_and_shared(monkeypatch, module: nn.Module, size: int, techniques: tuple[str, ...],
                      **settings: int) -> tuple[Report, SharedResults]:
    """A run's report, and ctx.shared as the trust section finds it (after the sections it reuses)."""
    import auditor.sections.trust as trust_module

    seen: list[SharedResults] = []
    original = trust_module.known_maps
    monkeypatch.setattr(trust_module, "known_maps", lambda ctx, rows: seen.append(ctx.shared) or original(ctx, rows))
    report = audit(module, techniques, size=size, trust_steps=1, trust_images=2, **settings)
    assert all(s.error is None for s in report.sections), [s.error_detail for s in report.sections]
    (shared,) = seen
    assert isinstance(shared, SharedResults)
    return report, shared


def test_the_sections_share_typed_results_on_the_cpu(monkeypatch) -> None:
    from auditor.sections.trust import known_maps

    _, shared = _audit_and_shared(monkeypatch, tiny(6), 32, ("cam", "reconstructions", "trust"), recon_channels=1)
    assert isinstance(shared.cam, CamShared)
    shown = shared.cam.shown
    assert shared.cam.layer and shared.cam.target == "logit"
    assert list(shared.cam.maps) == ["cam", "grad-cam", "grad-cam++", "layer-cam"]  # --cam-methods' default
    assert all(m.shape == (len(shown), 32, 32) and m.device.type == "cpu" for m in shared.cam.maps.values())
    assert set(shared.gradients) == {"guided-backprop", "deconvnet"}
    for found in shared.gradients.values():
        assert found.shown == shown and found.gradients.shape == (len(shown), 3, 32, 32)
    # the trust section's trained Guided Grad-CAM is the product of the shared results
    known = known_maps(type("Ctx", (), {"shared": shared})(), shown[:2])
    expected = gradient_saliency(shared.gradients["guided-backprop"].gradients[:2]
                                 * shared.cam.maps["grad-cam"][:2, None])
    torch.testing.assert_close(known["guided-grad-cam"], expected, rtol=0, atol=0)


def test_a_model_without_rectifiers_shares_no_gradients_under_their_names(monkeypatch) -> None:
    report, shared = _audit_and_shared(monkeypatch, _gelu_model(16), 16, ("reconstructions", "trust"),
                                       recon_channels=0)
    trust = next(s for s in report.sections if s.technique == "trust")
    assert shared.gradients == {} and shared.cam is None
    assert {"guided-backprop", "deconvnet"}.isdisjoint(trust.metrics["methods"])
    assert "gradient" in trust.metrics["methods"]
    assert any(note.startswith("Guided backprop is not scored: guided backprop: no rectifier")
               for note in trust.notes)
