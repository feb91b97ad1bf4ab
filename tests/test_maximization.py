"""Activation maximisation: objective, batching, determinism, truncation, model state, receptive
fields and dataset exemplars (checked by hand on tiny fixed-weight conv stacks)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.hooks import forward_hooks, truncated_forward
from auditor.techniques import maximization as mx
from auditor.techniques.parameterization import FourierImage, Jitter, random_affine
from tests.fixtures_models import tiny, tiny_swin, tiny_vit
from tests.toolkit import assert_unchanged, snapshot

LITE0_NORM = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def conv_stack(stride: int = 1) -> nn.Sequential:
    """conv 3x3 (stride `stride`, padding 1) then conv 3x3 (stride 1, padding 1), all weights one, no bias:
    a location of the second map sees 5x5 input pixels (stride 1) or 7x7 (stride 2)."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3, stride=stride, padding=1, bias=False),
                          nn.Conv2d(2, 2, 3, padding=1, bias=False))
    for conv in model:
        nn.init.ones_(conv.weight)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("method", mx.METHODS)
def test_objective_rises_far_above_a_random_input(lite0_model, method):
    model = lite0_model.module
    result = mx.maximize(model, "_blocks.7", [0, 40], size=48, steps=16, method=method, **LITE0_NORM)
    with torch.no_grad(), truncated_forward(model, model.get_submodule("_blocks.7")) as run:
        noise = torch.rand(8, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
        random = run(noise)[:, [0, 40]].mean(dim=(2, 3))  # [8 images, 2 channels]
    assert result.history.shape == (16, 2)
    assert (result.history[-4:].mean(0) > result.history[:4].mean(0) + 5).all()
    # "far above": at least 5 standard deviations of the random inputs' activations above their maximum
    # (measured: random inputs -3 to 6, optimised 17 to 50)
    assert (result.activations > random.amax(0) + 5 * random.std(0)).all(), (result.activations, random)


@pytest.mark.parametrize("method", mx.METHODS)
def test_float64_batch_equals_one_channel_at_a_time(method):
    model = tiny().double()
    batch = mx.maximize(model, "features.5", [0, 3, 9], size=16, steps=5, method=method)
    for i, channel in enumerate([0, 3, 9]):
        alone = mx.maximize(model, "features.5", [channel], size=16, steps=5, method=method)
        # float64: only rounding in the batched convolutions differs
        torch.testing.assert_close(batch.images[i], alone.images[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(batch.activations[i], alone.activations[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(batch.history[:, i], alone.history[:, 0], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", mx.METHODS)
def test_float32_deterministic_with_a_seed_and_global_rng_untouched(method):
    model = tiny()
    rng = torch.get_rng_state()
    first = mx.maximize(model, "features.5", [1, 2], size=16, steps=6, method=method, seed=3)
    again = mx.maximize(model, "features.5", [1, 2], size=16, steps=6, method=method, seed=3)
    other = mx.maximize(model, "features.5", [1, 2], size=16, steps=6, method=method, seed=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.images, again.images) and torch.equal(first.activations, again.activations)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (2, 3, 16, 16) and 0 <= first.images.min() and first.images.max() <= 1


def test_forward_stops_at_the_layer():
    model = tiny()
    calls: Counter[str] = Counter()
    names = ["features.2", "features.3", "features.5", "pool", "classifier"]

    def count(name):
        return lambda module, inputs, output: calls.update([name])

    with forward_hooks([(model.get_submodule(n), count(n)) for n in names]):
        mx.maximize(model, "features.2", [0], size=16, steps=7, method="fourier")
    # the target runs in the probe pass, two batch-norm folding passes (find the pairs with the model's
    # output, the folded output), the memory-layout probe's two, 7 steps and the final evaluation;
    # later modules only in the first probe pass
    assert calls == {"features.2": 13, "features.3": 1, "features.5": 1, "pool": 1, "classifier": 1}


def test_truncated_forward_returns_the_layer_output_and_none_if_it_never_runs():
    model = tiny()
    before = snapshot(model)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.features[1](model.features[0](x))
        with truncated_forward(model, model.features[1]) as run:
            torch.testing.assert_close(run(x), expected, rtol=0, atol=0)
    with truncated_forward(model, nn.ReLU()) as run:
        assert run(x) is None
    assert_unchanged(model, before)


def test_model_state_unchanged_also_when_raising():
    model = tiny()
    model.features[0].train()
    model.classifier.weight.requires_grad_(False)
    with forward_hooks([(model.pool, lambda *args: None)]):  # a user's hook must survive
        before = snapshot(model)
        mx.maximize(model, "features.5", [0, 1], size=16, steps=3, method="fourier")
        assert_unchanged(model, before)
        with pytest.raises(AuditorError, match="--max-channels: 'features.5' has 16 channels"):
            mx.maximize(model, "features.5", [16], size=16, steps=3)
        assert_unchanged(model, before)

        def explode(module, inputs, output):
            if explode.calls == 2:
                raise RuntimeError("boom")
            explode.calls += 1
        explode.calls = 0
        with forward_hooks([(model.features[1], explode)]):
            with pytest.raises(RuntimeError, match="boom"):  # fails inside the optimisation loop
                mx.maximize(model, "features.5", [0], size=16, steps=3, method="pixel")
        assert_unchanged(model, before)


def test_shared_module_and_bad_names_are_refused(lite0_model):
    with pytest.raises(AuditorError, match=r"--max-layer: '_blocks.3._swish' ran 2 times"):
        mx.maximize(lite0_model.module, "_blocks.3._swish", [0], size=32, steps=1)
    with pytest.raises(AuditorError, match="--max-layer: .* has no layer 'features.9'"):
        mx.maximize(tiny(), "features.9", [0], size=16, steps=1)
    with pytest.raises(AuditorError, match="--max-steps"):
        mx.maximize(tiny(), "features.5", [0], size=16, steps=0)


@pytest.mark.slow  # builds resnet50
def test_defaults(lite0_model):
    import torchvision

    assert mx.default_layer(lite0_model.module) == "_blocks.7"
    assert mx.default_layer(torchvision.models.resnet50()) == "layer2"
    assert mx.default_channels(80) == [0, 10, 20, 30, 40, 50, 60, 70]
    assert mx.default_channels(3) == [0, 1, 2]
    result = mx.maximize(tiny(), "features.5", None, size=16, steps=1)
    assert result.channels == (0, 2, 4, 6, 8, 10, 12, 14)


def test_receptive_field_two_convs_stride_one():
    # by hand: each 3x3 conv widens the field by 2: 5x5, centred on the location
    field = mx.receptive_field(conv_stack(), "1", 16)
    assert (field.origin, field.stride, field.extent, field.map_size) == ((-2, -2), (1, 1), (5, 5), (16, 16))
    boxes = field.boxes(torch.tensor([0, 7, 15]), torch.tensor([0, 9, 14]))
    assert boxes.tolist() == [[0, 0, 3, 3], [7, 5, 12, 10], [12, 13, 16, 16]]  # (x0, y0, x1, y1), clipped


def test_receptive_field_strided():
    # by hand: location i sees first-layer 2i-1..2i+1 → input rows 2(i-1)-1 .. 2(i+1)+1: 7 rows from 2i-3
    field = mx.receptive_field(conv_stack(stride=2), "1", 16)
    assert (field.origin, field.stride, field.extent, field.map_size) == ((-3, -3), (2, 2), (7, 7), (8, 8))


def test_receptive_field_global_layer_is_the_whole_input():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    field = mx.receptive_field(model, "2", 16)
    assert field.boxes(torch.tensor(0), torch.tensor(0)).tolist() == [0, 0, 16, 16]


def test_exemplars_by_hand():
    field = mx.receptive_field(conv_stack(), "1", 16)
    activations = torch.zeros(3, 2, 16, 16)
    activations[0, 1] = 1.0  # mean 1
    activations[2, 1, 4, 10] = 512.0  # mean 2, strongest at row 4, column 10
    activations[1, 1, 0, 0] = 128.0  # mean 0.5
    activations[1, 0, 15, 15] = 256.0  # channel 0: image 1 (mean 1) with its peak in the corner
    result = mx.exemplars(activations, [1, 0], field, top=2)
    assert result.images.tolist() == [[2, 0], [1, 0]]
    torch.testing.assert_close(result.activations, torch.tensor([[2.0, 1.0], [1.0, 0.0]]))
    assert result.boxes[0, 0].tolist() == [8, 2, 13, 7]  # columns 10-2..10+2, rows 4-2..4+2
    assert result.boxes[1, 0].tolist() == [13, 13, 16, 16]
    with pytest.raises(ValueError, match="same input size"):
        mx.exemplars(activations[..., :8, :8], [0], field)


def test_diversity_penalty_by_hand_and_shapes():
    same = torch.ones(4, 3, 2, 2)  # two channels x two identical copies: cosine 1 between copies
    assert mx._gram_similarity(same, 2).tolist() == [1.0, 1.0]
    orthogonal = torch.zeros(2, 2, 1, 1)
    orthogonal[0, 0], orthogonal[1, 1] = 1.0, 1.0  # Gram matrices e11 and e22: cosine 0
    assert mx._gram_similarity(orthogonal, 2).tolist() == [0.0]
    result = mx.maximize_diverse(tiny(), "features.5", [0, 5], copies=3, size=16, steps=3)
    assert result.images.shape == (2, 3, 3, 16, 16) and result.activations.shape == (2, 3)
    assert result.history.shape == (3, 2, 3)
    assert not torch.equal(result.images[0, 0], result.images[0, 1])


def test_parameterisations():
    image = FourierImage.create([0, 1], 12, torch.float64, torch.device("cpu"))
    rgb = image.rgb()
    assert rgb.shape == (2, 3, 12, 12) and 0 < rgb.min() and rgb.max() < 1
    still = Jitter(shift=0.0, scale=(1.0, 1.0), degrees=0.0)
    torch.testing.assert_close(random_affine(rgb, still, torch.Generator()), rgb, rtol=0, atol=1e-12)


def test_a_model_of_one_input_size_falls_back_to_it_and_its_tokens_are_channels():
    vit = tiny_vit()
    assert mx.runnable_size(vit, 64, 32) == 32 and mx.runnable_size(tiny(), 48, 32) == 48
    # a block's tokens: 8 channels on a 2 x 2 grid; the ViT refuses 64 px probes, so the field is the whole input
    field = mx.receptive_field(vit, "encoder.layers.encoder_layer_2", 32)
    assert (field.stride, field.extent, field.map_size) == ((0, 0), (32, 32), (2, 2))
    swin = tiny_swin()
    before = snapshot(swin)
    result = mx.maximize(swin, "features.1", [0, 7], size=32, steps=2, method="pixel")
    assert result.images.shape == (2, 3, 32, 32) and result.activations.shape == (2,)
    with torch.no_grad():  # channel 7 of the [N, 8, 8, 12] channels-last map: its last axis, not a row
        maps = swin.features[1](swin.features[0](mx_input(result.images)))
    assert torch.allclose(result.activations, torch.stack([maps[0, ..., 0].mean(), maps[1, ..., 7].mean()]),
                          rtol=1e-5, atol=1e-6)  # float32, same kernels
    with pytest.raises(AuditorError, match="--max-channels: 'features.1' has 12 channels"):
        mx.maximize(swin, "features.1", [12], size=32, steps=1)
    assert_unchanged(swin, before)


def mx_input(rgb: torch.Tensor) -> torch.Tensor:
    """The normalised input maximize feeds the model for RGB images (ImageNet mean and std, the default)."""
    mean = torch.tensor(mx.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(mx.IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std
