"""Integrated Gradients, SmoothGrad, occlusion and RISE: captum as the oracle (to float rounding), RISE's
reference mask construction, hand-made models with a known answer, batching, and the model left as found."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from torch import nn

from auditor.techniques import attribution
from auditor.techniques.attribution import GradientsUnavailable
from auditor.techniques.reconstructions import gradient
from tests.fixtures_models import tiny
from tests.toolkit import assert_unchanged, snapshot

# captum and ours differ only in batching and summation order: float32 rounding, relative to the largest value
RTOL = 1e-5
# occlusion's attributions are differences of nearly equal scores, computed here with the BatchNorms folded
# (rounded differently): about 1e-7 of the scores, 1e-5 of the differences
OCCLUSION_RTOL = 1e-4


def close(ours: torch.Tensor, reference: torch.Tensor, rtol: float = RTOL) -> bool:
    return bool((ours - reference).abs().max() <= rtol * reference.abs().max())


def images(count: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


class SmoothNet(nn.Module):
    """conv - tanh - mean - linear: smooth, so a 32-node quadrature is exact to float rounding."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).mean(dim=(2, 3)))


class Quadrant(nn.Module):
    """Logits [z, -z], z = 4 (q - 1/2), q the mean of the top-left quadrant's first channel: nothing else matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        z = 4 * (x[:, 0, :h, :w].mean(dim=(1, 2)) - 0.5)
        return torch.stack([z, -z], dim=1)


class Detaching(nn.Module):
    """A model whose forward cuts the graph at its input: no input gradient exists."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach())


class NoGrad(Detaching):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)


def traced(model: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # torch deprecates tracing; users still ship traced models
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.trace(model, x)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=10).eval()


# ------------------------------------------------------------------------------- Integrated Gradients

@pytest.mark.parametrize("steps", [1, 7, 20])
def test_integrated_gradients_equals_captum_default_on_a_tiny_model(steps: int) -> None:
    model, x, t = tiny(), images(), torch.tensor([1, 3])
    ours = attribution.integrated_gradients_attributions(model, x, t, steps=steps, batch_size=5)
    reference = IntegratedGradients(model).attribute(x, target=t, n_steps=steps)  # method="gausslegendre"
    assert ours.shape == (2, 1, 3, 32, 32)
    assert close(ours[:, 0], reference)


def test_integrated_gradients_equals_captum_on_resnet18_with_a_baseline(resnet: nn.Module) -> None:
    x, t = images(), torch.tensor([2, 7])
    baseline = torch.full((3, 1, 1), 0.5)  # a per-channel baseline
    ours = attribution.integrated_gradients_attributions(resnet, x, t, steps=6, baseline=baseline, batch_size=4)
    reference = IntegratedGradients(resnet).attribute(x, baselines=baseline.expand(2, 3, 32, 32), target=t,
                                                      n_steps=6)
    assert close(ours[:, 0], reference)


def test_integrated_gradients_is_complete() -> None:
    """Sum of the attributions = score(x) - score(baseline) (the method's completeness axiom)."""
    model, x = SmoothNet().eval(), images()
    t = torch.tensor([[0, 2], [1, 0]])
    baseline = torch.full_like(x, -0.3)
    ours = attribution.integrated_gradients_attributions(model, x, t, steps=32, baseline=baseline)
    with torch.no_grad():
        difference = (model(x) - model(baseline)).gather(1, t)
    torch.testing.assert_close(ours.sum(dim=(2, 3, 4)), difference, atol=1e-5, rtol=1e-4)


def test_integrated_gradients_of_probabilities_with_a_sigmoid_head() -> None:
    from auditor.inputs.models.heads import Head

    model, x, t = SmoothNet().eval(), images(), torch.tensor([2, 0])
    ours = attribution.integrated_gradients_attributions(model, x, t, steps=5, target="prob", head=Head("sigmoid"))
    reference = IntegratedGradients(lambda v: model(v).sigmoid()).attribute(x, target=t, n_steps=5)
    assert close(ours[:, 0], reference)


def test_gradient_methods_work_under_the_callers_inference_mode() -> None:
    model, t = tiny(), torch.tensor([1, 3])
    expected = attribution.integrated_gradients(model, images(), t, steps=3)
    with torch.inference_mode():
        x = images()
        assert torch.equal(attribution.integrated_gradients(model, x, t, steps=3), expected)
        attribution.smooth_grad(model, x, t, samples=2)


# ------------------------------------------------------------------------------------------- SmoothGrad

def test_smooth_grad_without_noise_is_the_plain_gradient() -> None:
    model, x, t = tiny(), images(), torch.tensor([1, 3])
    plain = gradient(model, x, t)
    raw = attribution.smooth_grad_attributions(model, x, t, torch.zeros(2, 3, 3, 32, 32))
    torch.testing.assert_close(raw[:, 0], plain, atol=1e-7, rtol=1e-6)
    from auditor.techniques.reconstructions import gradient_saliency

    torch.testing.assert_close(attribution.smooth_grad(model, x, t, noise=0.0), gradient_saliency(plain))


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq"])
def test_smooth_grad_equals_captum_noise_tunnel_given_the_same_noise(nt_type: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, t = tiny(), images(), torch.tensor([4, 0])
    noise = attribution.smooth_grad_noise(x, samples=5, noise=0.2, seed=3)  # [N, S, C, H, W]
    ours = attribution.smooth_grad_attributions(model, x, t, noise, squared=nt_type == "smoothgrad_sq", batch_size=3)
    calls = []

    def same_noise(mean: float, std: torch.Tensor) -> torch.Tensor:  # captum's one draw, image by image
        calls.append(std.shape)
        return noise.flatten(0, 1)

    monkeypatch.setattr(torch, "normal", same_noise)
    reference = NoiseTunnel(Saliency(model)).attribute(x, nt_type=nt_type, nt_samples=5, stdevs=0.2, target=t,
                                                       abs=False)
    assert calls == [torch.Size([10, 3, 32, 32])]
    assert close(ours[:, 0], reference)


def test_smooth_grad_noise_is_relative_to_each_image_whatever_its_batch_and_leaves_the_global_rng() -> None:
    x = torch.stack([images(1)[0], 10 * images(1)[0]])
    state = torch.get_rng_state()
    noise = attribution.smooth_grad_noise(x, samples=400, noise=0.1, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(noise, attribution.smooth_grad_noise(x, samples=400, noise=0.1, seed=0))
    assert torch.equal(noise[1:], attribution.smooth_grad_noise(x[1:], samples=400, noise=0.1, seed=0))  # batch-free
    spans = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    torch.testing.assert_close(noise.flatten(1).std(dim=1), 0.1 * spans, rtol=0.01, atol=0)


# -------------------------------------------------------------------------------------------- occlusion

@pytest.mark.parametrize(("window", "stride", "baseline"), [(5, 4, 0.0), (8, 8, 0.3), (7, 3, -1.0), (4, 2, "mean")])
def test_occlusion_equals_captum(window: int, stride: int, baseline: float | str) -> None:
    model, x, t = tiny(), images(), torch.tensor([2, 1])
    base = x.mean(dim=(2, 3), keepdim=True) if baseline == "mean" else baseline  # per image and channel
    ours = attribution.occlusion_attributions(model, x, t, window, stride, base, batch_size=7)
    reference = Occlusion(model).attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                           target=t, baselines=base)
    assert ours.shape == (2, 1, 32, 32)
    assert torch.equal(reference, reference[:, :1].expand_as(reference))  # one value for all channels
    assert close(ours[:, 0], reference[:, 0], OCCLUSION_RTOL)


def test_occlusion_defaults_and_map() -> None:
    """Default window 1/8 of the side, stride half of it; the map is the positive part, min-max."""
    model, x, t = tiny(), images(), torch.tensor([2, 1])
    raw = attribution.occlusion_attributions(model, x, t, 4, 2)
    torch.testing.assert_close(attribution.occlusion_attributions(model, x, t), raw)
    maps = attribution.occlusion(model, x, t)
    positive = raw[:, 0].relu()
    torch.testing.assert_close(maps, positive / positive.amax(dim=(1, 2), keepdim=True))


# ------------------------------------------------------------------------------------------------- RISE

def test_rise_masks_follow_the_reference_construction() -> None:
    """skimage resize(order=1, mode="reflect") of the grid to (s + 1) * ceil(H / s), cropped at the shift."""
    skimage = pytest.importorskip("skimage.transform")
    drawn = attribution._RiseMasks(6, 5, 0.5, (24, 20), seed=2)
    masks = attribution.rise_masks(6, 5, 0.5, (24, 20), seed=2)
    up = (5 + 1) * np.ceil(np.array([24, 20]) / 5).astype(int)
    for grid, top, left, mask in zip(drawn.grids, drawn.shifts[0], drawn.shifts[1], masks, strict=True):
        big = skimage.resize(grid.numpy(), up, order=1, mode="reflect", anti_aliasing=False)
        np.testing.assert_allclose(mask.numpy(), big[top:top + 24, left:left + 20], atol=1e-6)
    assert set(drawn.grids.unique().tolist()) == {0.0, 1.0}


def test_rise_saliency_is_the_reference_formula() -> None:
    model, x, t = tiny(), images(), torch.tensor([[1, 4], [0, 2]])
    masks = attribution.rise_masks(20, 4, 0.4, (32, 32), seed=5)
    ours = attribution.rise_saliency(model, x, t, masks=20, cell=4, p=0.4, seed=5, batch_size=7)
    with torch.no_grad():
        probabilities = model((x[:, None] * masks[None, :, None]).flatten(0, 1)).softmax(1).view(2, 20, -1)
    scores = probabilities.gather(2, t[:, None].expand(-1, 20, -1))  # [N, masks, K]
    expected = torch.einsum("nmk,mhw->nkhw", scores, masks) / (20 * 0.4)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("target", "masks", "mass"), [("logit", 2000, 0.6), ("prob", 1000, 0.45)])
def test_rise_finds_the_only_region_the_model_reads(target: str, masks: int, mass: float) -> None:
    """The map's brightest quarter lies over 90 % in the quadrant the model reads (chance: 25 %; seen
    about 96 %), and its min-max mass over 60 % (seen 64-73 % over seeds) for the logit, which is linear in
    what the model reads; over 45 % for the softmax probability, whose saturation adds noise (seen 50-57 %).
    The rest of the mass is the Monte Carlo noise floor and the blur of the smooth masks across the edge."""
    x = torch.ones(1, 3, 48, 48)
    maps = attribution.rise(Quadrant(), x, torch.tensor([0]), masks=masks, cell=6, target=target)
    assert maps.shape == (1, 48, 48) and maps.min() >= 0 and maps.max() == 1
    quadrant = torch.zeros(48, 48, dtype=torch.bool)
    quadrant[:24, :24] = True
    brightest = maps[0] >= maps[0].quantile(0.75)
    assert (brightest & quadrant).sum() / brightest.sum() > 0.9
    assert maps[0, quadrant].sum() / maps.sum() > mass


# ----------------------------------------------------------------------------------- all four methods

METHODS = {
    "integrated_gradients": lambda m, x, t, **kw: attribution.integrated_gradients(m, x, t, steps=3, **kw),
    "smooth_grad": lambda m, x, t, **kw: attribution.smooth_grad(m, x, t, samples=3, **kw),
    "smooth_grad_sq": lambda m, x, t, **kw: attribution.smooth_grad(m, x, t, samples=3, squared=True, **kw),
    "occlusion": lambda m, x, t, **kw: attribution.occlusion(m, x, t, 8, 4, **kw),
    "rise": lambda m, x, t, **kw: attribution.rise(m, x, t, masks=12, cell=4, **kw),
}


@pytest.mark.parametrize("method", METHODS)
def test_shapes_columns_and_batch_size(method: str) -> None:
    run, model, x = METHODS[method], tiny(), images(3)
    columns = torch.tensor([[1, 4], [0, 0], [3, 2]])
    both = run(model, x, columns, batch_size=5)
    assert both.shape == (3, 2, 32, 32) and both.min() >= 0 and both.max() <= 1
    for k in range(2):
        single = run(model, x, columns[:, k], batch_size=64)
        assert single.shape == (3, 32, 32)
        torch.testing.assert_close(single, both[:, k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_model_left_as_found_also_when_a_call_raises(method: str) -> None:
    model = tiny().train()
    model.features[0].weight.requires_grad_(False)
    before = snapshot(model)
    run, x = METHODS[method], images()
    run(model, x, torch.tensor([1, 2]), target="prob")
    assert_unchanged(model, before)
    with pytest.raises(attribution.AuditorError, match="class indices must be in 0..4"):
        run(model, x, torch.tensor([1, 9]))
    assert_unchanged(model, before)
    with pytest.raises(attribution.AuditorError, match="LongTensor"):
        run(model, x, torch.tensor([1.0, 2.0]))
    assert_unchanged(model, before)


def test_forward_only_methods_run_on_a_traced_model() -> None:
    model, x, t = tiny(), images(), torch.tensor([[1, 3], [0, 2]])
    script = traced(model, x)
    for run in (METHODS["occlusion"], METHODS["rise"]):
        torch.testing.assert_close(run(script, x, t), run(model, x, t), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make", [Detaching, NoGrad, lambda: traced(Detaching(), images())])
def test_gradient_methods_say_when_there_is_no_input_gradient(make: type[nn.Module]) -> None:
    model, x, t = make(), images(), torch.tensor([1, 3])
    before = snapshot(model)
    for run in (METHODS["integrated_gradients"], METHODS["smooth_grad"]):
        with pytest.raises(GradientsUnavailable, match="use occlusion or rise"):
            run(model, x, t)
    assert_unchanged(model, before)
    assert METHODS["occlusion"](model, x, t).shape == (2, 32, 32)  # the forward-only methods still serve


def test_seeded_methods_leave_the_global_rng_and_repeat() -> None:
    model, x, t = tiny(), images(), torch.tensor([1, 3])
    state = torch.get_rng_state()
    first = attribution.rise(model, x, t, masks=10, seed=4), attribution.smooth_grad(model, x, t, samples=2, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    second = attribution.rise(model, x, t, masks=10, seed=4), attribution.smooth_grad(model, x, t, samples=2, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], attribution.rise(model, x, t, masks=10, seed=5))


def test_bad_settings_are_user_errors() -> None:
    model, x, t = tiny(), images(), torch.tensor([1, 3])
    for call in (lambda: attribution.integrated_gradients(model, x, t, steps=0),
                 lambda: attribution.occlusion(model, x, t, window=4, stride=5),
                 lambda: attribution.occlusion(model, x, t, window=40),
                 lambda: attribution.rise(model, x, t, p=0),
                 lambda: attribution.smooth_grad(model, x, t, noise=-1),
                 lambda: attribution.occlusion(model, x, t, batch_size=0),
                 lambda: attribution.integrated_gradients(model, x, t, baseline=torch.zeros(2, 2)),
                 lambda: attribution.occlusion(model, x, t, target="logits")):
        with pytest.raises(attribution.AuditorError):
            call()
