"""Trust metrics: hand computations on tiny cases, peer libraries as oracles (scipy, scikit-image,
pytorch-grad-cam, quantus), and the model left exactly as found."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from auditor.errors import AuditorError
from auditor.inputs.preprocess import Preprocess
from auditor.techniques import reconstructions
from auditor.techniques.trust import boxes as trust_boxes
from auditor.techniques.trust import perturbation as trust_perturbation
from auditor.techniques.trust import randomization, similarity
from tests.fixtures_models import tiny, tiny_vit
from tests.toolkit import assert_unchanged, snapshot


def user_model() -> nn.Module:
    """A TinyNet as a user might hand it over: training mode, one frozen layer."""
    model = tiny().train()
    model.features[0].weight.requires_grad_(False)
    return model


# ---------------------------------------------------------------- Spearman and SSIM


def test_spearman_hand_computed() -> None:
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]]])
    b = torch.tensor([[[1.0, 2.0], [4.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]])
    rho = similarity.spearman(a, b)
    # 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60; ties: ranks 1.5 1.5 3 4 -> 4.5 / sqrt(4.5 * 5);
    # a constant map has no ranking -> 0 by definition
    assert rho.tolist() == pytest.approx([0.8, 4.5 / math.sqrt(22.5), 0.0], abs=1e-6)


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 3, 24, 20, generator=g) * 8).floor()  # many ties
    b = a + torch.rand(2, 3, 24, 20, generator=g) * 4
    rho = similarity.spearman(a, b)
    assert rho.shape == (2, 3) and rho.dtype == torch.float32
    expected = [[spearmanr(a[i, j].flatten(), b[i, j].flatten()).statistic for j in range(3)] for i in range(2)]
    np.testing.assert_allclose(rho.numpy(), expected, atol=1e-6)  # float32 result of float64 ranks


def test_ssim_matches_skimage() -> None:
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 32, 40, generator=g)
    b = (a + 0.4 * torch.rand(3, 32, 40, generator=g)).clamp(0, 1)
    b[2] = a[2]
    got = similarity.ssim(a, b)
    expected = [structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)  # float32 filtering vs skimage's float64
    assert got[2] == pytest.approx(1.0, abs=1e-6)


def test_many_pairs_at_once_equal_each_pair() -> None:
    """The cascade's batched similarities: references ranked (and blurred) once, pairs gathered by index."""
    g = torch.Generator().manual_seed(5)
    references = torch.rand(3, 2, 16, 18, generator=g)
    references[1, 0] = (references[1, 0] * 4).floor() / 4  # ties
    references[2, 1] = 0.0  # a constant map
    index = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    after = (references[index] + 0.5 * torch.rand(7, 2, 16, 18, generator=g)).clamp(0, 1)
    after[3] = 0.0
    rho = similarity.spearman(references, after, index)
    structure = similarity.ssim(references, after, index=index)
    assert rho.shape == structure.shape == (7, 2)
    for p, i in enumerate(index.tolist()):
        torch.testing.assert_close(rho[p], similarity.spearman(references[i], after[p]), rtol=0, atol=1e-7)
        torch.testing.assert_close(structure[p], similarity.ssim(references[i], after[p]), rtol=0, atol=1e-6)
    assert similarity.spearman(references, after[:0], index[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="pairs"):
        similarity.spearman(references, after, torch.tensor([0, 3, 1, 1, 0, 2, 2]))


def test_ssim_hand_computed_constants_and_small_maps() -> None:
    zeros, ones = torch.zeros(1, 12, 12), torch.ones(1, 12, 12)
    # constant maps: no variance, so SSIM = (2 * 0 * 1 + C1) / (0 + 1 + C1) with C1 = 0.01^2
    assert float(similarity.ssim(zeros, ones)) == pytest.approx(1e-4 / 1.0001, rel=1e-4)
    with pytest.raises(AuditorError, match="11x11"):
        similarity.ssim(torch.zeros(10, 10), torch.zeros(10, 10))


def test_gradient_saliency_is_channel_max_of_abs_scaled() -> None:
    grads = torch.tensor([[[[1.0, -4.0]], [[-3.0, 2.0]], [[0.0, 1.0]]], [[[2.0, 2.0]], [[2.0, 2.0]], [[0.0, 0.0]]]])
    # |g| max over channels: [3, 4] -> (x - 3) / (4 - 3); a constant map -> zeros
    assert reconstructions.gradient_saliency(grads).tolist() == [[[0.0, 1.0]], [[0.0, 0.0]]]


# ---------------------------------------------------------------- cascading randomisation


class Registered(nn.Module):
    """Head registered before the body, and a child used only through its weight (like MHA's out_proj)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.body = nn.Conv2d(1, 4, 1)
        self.mixer = nn.Module()
        self.mixer.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x).mean(dim=(2, 3))
        return self.head(nn.functional.linear(features, self.mixer.proj.weight, self.mixer.proj.bias))


def test_parametrised_layers_follow_the_forward_pass() -> None:
    model = Registered()
    assert randomization.parametrised_layers(model) == ["head", "body", "mixer.proj"]  # registration order
    # forward order; mixer.proj never runs itself and its parent is never called: the root's place
    assert randomization.parametrised_layers(model, torch.zeros(1, 1, 2, 2)) == ["mixer.proj", "body", "head"]
    assert randomization.parametrised_layers(tiny(), torch.zeros(1, 3, 8, 8)) == [
        "features.0", "features.1", "features.3", "features.4", "classifier"]


def test_cascade_ends() -> None:
    assert randomization.cascade_ends(10, 4) == [1, 4, 7, 10]  # head alone, then 3 groups of 3
    assert randomization.cascade_ends(3, 5) == [1, 2, 3]  # capped at one layer per step
    assert randomization.cascade_ends(5, 1) == [5]
    assert randomization.cascade_ends(7, 3) == [1, 4, 7]


def changed_layers(original: nn.Module, randomised: nn.Module) -> set[str]:
    ours = randomised.state_dict()
    return {name.rpartition(".")[0] for name, value in original.state_dict().items()
            if not name.endswith("num_batches_tracked") and not torch.equal(value, ours[name])}


def test_cascade_randomises_from_the_head_and_leaves_the_user_model_alone() -> None:
    model = user_model()
    before = snapshot(model)
    rng = torch.get_rng_state()
    steps = [(label, changed_layers(model, copy)) for label, copy in
             randomization.randomization_cascade(model, 3, seed=0, example=torch.zeros(1, 3, 8, 8))]
    assert steps == [
        ("classifier", {"classifier"}),
        ("features.3", {"classifier", "features.4", "features.3"}),
        ("features.0", {"classifier", "features.4", "features.3", "features.1", "features.0"}),
    ]
    assert_unchanged(model, before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_cascade_is_reproducible_and_resets_batch_norm() -> None:
    model = tiny()
    *_, (_, first) = randomization.randomization_cascade(model, 2, seed=3)
    first = {k: v.clone() for k, v in first.state_dict().items()}
    *_, (_, again) = randomization.randomization_cascade(model, 5, seed=3)  # other grouping, same weights
    *_, (_, other) = randomization.randomization_cascade(model, 2, seed=4)
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())
    assert not torch.equal(first["features.0.weight"], other.state_dict()["features.0.weight"])
    bn = again.features[1]
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.running_mean, torch.zeros(8))
    assert torch.equal(bn.running_var, torch.ones(8))


def test_cascade_rejects_bad_steps() -> None:
    with pytest.raises(AuditorError, match="--trust-steps"):
        next(randomization.randomization_cascade(tiny(), 0))
    with pytest.raises(AuditorError, match="no parameters"):
        next(randomization.randomization_cascade(nn.ReLU(), 2))


def test_no_hook_survives_a_failing_forward() -> None:
    model = user_model()
    before = snapshot(model)
    with pytest.raises(RuntimeError):
        randomization.parametrised_layers(model, torch.zeros(1, 5, 8, 8))  # wrong channel count
    assert_unchanged(model, before)


@pytest.mark.slow
def test_cascade_on_the_default_model(lite0_model) -> None:
    model = lite0_model.module
    before = snapshot(model)
    labels, last = [], None
    for label, randomised in randomization.randomization_cascade(model, 3, seed=0, example=torch.zeros(1, 3, 64, 64)):
        labels.append(label)
        last = changed_layers(model, randomised)
    parametrised = {name for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None}
    assert labels[0] == "_fc" and labels[-1] == "_conv_stem"
    assert last == parametrised  # every layer is random at the last step
    assert_unchanged(model, before)


def test_cascade_on_a_small_vision_transformer() -> None:
    model = tiny_vit(num_layers=1)
    with torch.no_grad():  # as if trained: values that a reset to the initial ones changes
        model.class_token.normal_()
        for norm in (m for m in model.modules() if isinstance(m, nn.LayerNorm)):
            norm.weight.fill_(2.0)
    names = randomization.parametrised_layers(model, torch.zeros(1, 3, 32, 32))
    # class token and position embedding are used first; out_proj (used functionally) sits with its attention
    assert names[:3] == ["", "conv_proj", "encoder"] and names[-1] == "heads.head"
    attention = names.index("encoder.layers.encoder_layer_0.self_attention")
    assert names[attention + 1] == "encoder.layers.encoder_layer_0.self_attention.out_proj"
    *_, (label, randomised) = randomization.randomization_cascade(model, 2, seed=0, example=torch.zeros(1, 3, 32, 32))
    assert label == "(root)"
    assert changed_layers(model, randomised) == set(names)  # "" is the root, for class_token
    assert not torch.equal(model.class_token, randomised.class_token)  # no reset_parameters: redrawn
    assert not torch.equal(model.encoder.pos_embedding, randomised.encoder.pos_embedding)


def test_random_other_class() -> None:
    top = torch.tensor([0, 1, 2, 3] * 100)
    other = randomization.random_other_class(top, 4, seed=0)
    assert other.shape == top.shape and bool((other != top).all())
    assert set(other[top == 0].tolist()) == {1, 2, 3}  # uniform over the others: all appear in 100 draws
    assert torch.equal(other, randomization.random_other_class(top, 4, seed=0))
    with pytest.raises(AuditorError, match="2 classes"):
        randomization.random_other_class(top, 1)


def test_sanity_verdict() -> None:
    # guided backprop and Grad-CAM on the default model (bench/bench_trust.py): means 0.75 and 0.03; guided
    # backprop's last step (0.38) is low, its mean over the steps is not: the mean decides
    assert randomization.sanity_verdict([1.00, 0.97, 0.90, 0.76, 0.47, 0.38]) == "warn"
    assert randomization.sanity_verdict([0.42, 0.01, -0.05, -0.18, 0.11, -0.13]) == "pass"
    # exact in binary: a mean equal to the threshold warns ("below" is strict)
    assert randomization.sanity_verdict([0.375, 0.125], threshold=0.25) == "warn"
    assert randomization.sanity_verdict([0.375, 0.125], threshold=0.251) == "pass"
    # [steps, images]: the mean of all four, 0.375 (the last step alone is 0.25, the first image alone 0.625)
    curves = torch.tensor([[1.0, 0.0], [0.25, 0.25]])
    assert randomization.sanity_verdict(curves, threshold=0.375) == "warn"
    assert randomization.sanity_verdict(curves, threshold=0.376) == "pass"
    assert randomization.sanity_verdict([0.3, 0.3], threshold=0.2) == "warn"
    # a method scored at a subset of the steps: NaN elsewhere, the mean of the computed steps decides
    nan = float("nan")
    assert randomization.sanity_verdict([0.2, nan, 0.4, nan], threshold=0.31) == "pass"
    assert randomization.sanity_verdict(torch.tensor([[nan, nan], [0.2, 0.4]]), threshold=0.3) == "warn"
    assert randomization.sanity_verdict([nan, nan]) == "warn"


# ---------------------------------------------------------------- deletion, insertion, confidence


class LinearOnPixels(nn.Module):
    """2x2 images: logit 0 = sum of channel 0 weighted [[1, -1], [2, 0]], logit 1 = 0, so p0 = sigmoid(z0)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[0, :4] = torch.tensor([1.0, -1.0, 2.0, 0.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


X_HAND = torch.zeros(1, 3, 2, 2)
X_HAND[0, 0] = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # channel 0 mean 2.5; other channels 0
MAP_HAND = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]])  # order: (0,0), (1,0), (1,1), (0,1)


def test_deletion_insertion_hand_computed() -> None:
    curves = trust_perturbation.deletion_insertion(LinearOnPixels(), X_HAND, MAP_HAND, torch.tensor([0]), steps=5,
                                                   baseline="mean", batch_size=3)
    # deletion replaces 0..4 pixels by 2.5 in map order: z0 = 5, 2.5-3+4, 2.5-3+5, same (weight 0), 2.5-2.5+5
    deletion = [sigmoid(z) for z in (5.0, 3.5, 4.5, 4.5, 5.0)]
    # insertion puts them into the all-2.5 image: z0 = 5, 4-2.5+5, 4-2.5+4, same, 5
    insertion = [sigmoid(z) for z in (5.0, 6.5, 5.5, 5.5, 5.0)]
    assert curves.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(curves.deletion[0].numpy(), deletion, atol=1e-6)
    np.testing.assert_allclose(curves.insertion[0].numpy(), insertion, atol=1e-6)
    trapezoid = lambda p: 0.25 * (p[0] / 2 + p[1] + p[2] + p[3] + p[4] / 2)
    assert float(curves.deletion_auc[0]) == pytest.approx(trapezoid(deletion), abs=1e-6)
    assert float(curves.insertion_auc[0]) == pytest.approx(trapezoid(insertion), abs=1e-6)
    assert curves.images_evaluated == 2 + 2 * 3  # image and baseline once, 3 inner steps each way
    assert curves.baseline == "the image's mean colour"


def test_deletion_insertion_batching_and_shapes() -> None:
    model = tiny()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    maps = torch.rand(2, 3, 8, 8, generator=g)  # three maps per image, at a lower resolution
    targets = torch.tensor([[0, 1, 2], [3, 4, 0]])
    one = trust_perturbation.deletion_insertion(model, x, maps, targets, steps=4, batch_size=1)
    many = trust_perturbation.deletion_insertion(model, x, maps, targets, steps=4, batch_size=64)
    assert one.deletion.shape == (2, 3, 4) and one.insertion_auc.shape == (2, 3)
    torch.testing.assert_close(one.deletion, many.deletion, atol=1e-6, rtol=0)  # batching does not change results
    torch.testing.assert_close(one.insertion, many.insertion, atol=1e-6, rtol=0)
    assert many.images_evaluated == 2 * 2 + 2 * 3 * 2 * 2
    probabilities = model(x).softmax(1)
    torch.testing.assert_close(many.deletion[..., 0], probabilities.gather(1, targets), atol=1e-6, rtol=0)
    with pytest.raises(AuditorError, match="--trust-baseline"):
        trust_perturbation.deletion_insertion(model, x, maps, targets, steps=4, baseline="zero")
    with pytest.raises(AuditorError, match="--trust-steps"):
        trust_perturbation.deletion_insertion(model, x, maps, targets, steps=1)


class PatchDetector(nn.Module):
    """Class 0 is the evidence in channel 0 of a 4x4 patch at (4..8, 8..12) of a 16x16 image."""

    def __init__(self) -> None:
        super().__init__()
        weight = torch.zeros(2, 3, 16, 16)
        weight[0, 0, 4:8, 8:12] = 0.5
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) * self.weight).sum(dim=(2, 3, 4))


def test_a_perfect_map_beats_random_maps() -> None:
    x = torch.full((2, 3, 16, 16), -1.0)
    x[:, 0, 4:8, 8:12] = 1.0
    perfect = torch.zeros(2, 16, 16)
    perfect[:, 4:8, 8:12] = 1.0
    maps = torch.cat([perfect.unsqueeze(1), trust_perturbation.random_maps((2, 8, 16, 16), seed=0)], dim=1)
    for baseline in ("blur", "mean"):
        curves = trust_perturbation.deletion_insertion(PatchDetector(), x, maps, torch.tensor([0, 0]), steps=9,
                                                       baseline=baseline)
        assert bool((curves.deletion_auc[:, 0] < curves.deletion_auc[:, 1:].mean(1) - 0.1).all())
        assert bool((curves.insertion_auc[:, 0] > curves.insertion_auc[:, 1:].mean(1) + 0.1).all())


def test_blur_baseline_matches_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    x = torch.randn(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    blurred, words = trust_perturbation.baseline_images(x, "blur")
    # 11 taps at sigma 5 is scipy's truncate = 1.0; replicated borders are scipy's mode "nearest"
    expected = np.stack([gaussian_filter(c, sigma=5, truncate=1.0, mode="nearest") for c in x[0].numpy()])
    np.testing.assert_allclose(blurred[0].numpy(), expected, atol=1e-5)
    assert "sigma 5 px" in words


def test_random_maps_are_seeded() -> None:
    rng = torch.get_rng_state()
    a = trust_perturbation.random_maps((2, 4, 4), seed=1)
    assert torch.equal(a, trust_perturbation.random_maps((2, 4, 4), seed=1))
    assert not torch.equal(a, trust_perturbation.random_maps((2, 4, 4), seed=2))
    assert bool(((a >= 0) & (a <= 1)).all()) and torch.equal(torch.get_rng_state(), rng)


def test_confidence_change_hand_computed() -> None:
    x = X_HAND.repeat(2, 1, 1, 1)
    maps = torch.stack([MAP_HAND[0], torch.full((2, 2), 0.5)])
    change = trust_perturbation.confidence_change(LinearOnPixels(), x, maps, torch.tensor([0, 0]))
    # image 1: z0 = 4*.9 - 3*.1 + 2*2*.5 = 5.3 > 5 (an increase); image 2: z0 = 5 * 0.5 = 2.5
    drop2 = (sigmoid(5.0) - sigmoid(2.5)) / sigmoid(5.0) * 100
    np.testing.assert_allclose(change.masked_score.numpy(), [sigmoid(5.3), sigmoid(2.5)], atol=1e-6)
    np.testing.assert_allclose(change.drop.numpy(), [0.0, drop2], atol=1e-4)
    assert float(change.average_drop) == pytest.approx(drop2 / 2, abs=1e-4)
    assert float(change.increase_in_confidence) == pytest.approx(50.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        trust_perturbation.confidence_change(LinearOnPixels(), x, maps * 2, torch.tensor([0, 0]))


def test_confidence_change_takes_the_clean_scores_from_deletion_insertion() -> None:
    model = tiny().eval()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 16, 16, generator=g)
    maps = torch.rand(2, 3, 16, 16, generator=g)
    targets = torch.tensor([[1, 1, 1], [4, 4, 4]])
    curves = trust_perturbation.deletion_insertion(model, x, maps, targets, steps=3)
    forwards: list[int] = []
    model.features[0].register_forward_pre_hook(lambda module, inputs: forwards.append(inputs[0].shape[0]))
    alone = trust_perturbation.confidence_change(model, x, maps, targets)
    assert sum(forwards) == 2 + 6
    forwards.clear()
    reused = trust_perturbation.confidence_change(model, x, maps, targets, scores=curves.deletion[..., 0])
    assert sum(forwards) == 6  # the masked images only
    for field in ("score", "masked_score", "drop", "average_drop", "increase_in_confidence"):
        torch.testing.assert_close(getattr(reused, field), getattr(alone, field), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="scores"):
        trust_perturbation.confidence_change(model, x, maps, targets, scores=curves.deletion[0, :, 0])


def test_confidence_change_matches_pytorch_grad_cam() -> None:
    from pytorch_grad_cam.metrics.cam_mult_image import (
        DropInConfidence,
        IncreaseInConfidence,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = tiny()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 32, 32, generator=g)
    maps = torch.rand(4, 32, 32, generator=g)
    targets = torch.tensor([0, 1, 2, 3])
    change = trust_perturbation.confidence_change(model, x, maps, targets, batch_size=3)
    pgc_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    drop = DropInConfidence()(x, maps.numpy(), pgc_targets, model)  # max(0, y - o), not yet divided by y
    increase = IncreaseInConfidence()(x, maps.numpy(), pgc_targets, model)
    np.testing.assert_allclose(change.drop.numpy(), drop / change.score.numpy() * 100, atol=1e-4)  # percent
    np.testing.assert_array_equal((change.masked_score > change.score).numpy(), increase.astype(bool))


def test_perturbation_functions_leave_the_model_as_found() -> None:
    model = user_model()
    before = snapshot(model)
    x, maps = torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16)
    trust_perturbation.deletion_insertion(model, x, maps, torch.tensor([0, 1]), steps=3)
    trust_perturbation.confidence_change(model, x, maps, torch.tensor([0, 1]))
    assert_unchanged(model, before)
    with pytest.raises(RuntimeError):  # the model cannot take 5 channels
        trust_perturbation.deletion_insertion(model, torch.randn(2, 5, 16, 16), maps, torch.tensor([0, 1]), steps=3)
    with pytest.raises(RuntimeError):
        trust_perturbation.confidence_change(model, torch.randn(2, 5, 16, 16), maps, torch.tensor([0, 1]))
    assert_unchanged(model, before)


# ---------------------------------------------------------------- boxes: geometry, pointing game, mass


def test_box_to_input_hand_computed_and_as_display_draws_it() -> None:
    preprocess = Preprocess(resize=40, crop=32, interpolation="nearest")
    # 100 x 50: short side 50 -> 40, so 80 x 40 (scale 0.8), crop offset (24, 4)
    assert trust_boxes.box_to_input((40, 10, 60, 30), (100, 50), preprocess) == pytest.approx((8, 4, 24, 20))
    original = Image.new("L", (100, 50))
    original.paste(255, (40, 10, 60, 30))
    shown = np.asarray(preprocess.display(original))[..., 0] > 127
    rows, cols = np.nonzero(shown)
    assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (8, 4, 24, 20)


POINTING = Preprocess(resize=8, crop=8)  # a 16 x 16 image is halved, no crop offset


def test_pointing_game_hand_computed() -> None:
    maps = torch.zeros(1, 8, 8)
    maps[0, 2, 6] = 1.0  # centre (6.5, 2.5) in input pixels = (13, 5) in original pixels
    near, far = [(0.0, 0.0, 10.0, 10.0)], [(0.0, 0.0, 2.0, 2.0)]  # 3 px away; sqrt(11^2 + 3^2) = 11.40 px
    hit = lambda boxes, tol: bool(trust_boxes.pointing_game(maps, [boxes], [(16, 16)], POINTING, tol)[0])
    assert hit(near, 15) and hit(near, 3.0) and not hit(near, 2.9)
    assert hit(far, 11.5) and not hit(far, 11.3)
    assert hit(far + near, 3.0)  # several boxes: the nearest counts
    plateau = torch.zeros(1, 8, 8)
    plateau[0, 0, 0] = plateau[0, 7, 7] = 1.0  # two maxima: (1, 1) inside, (15, 15) far from the box
    assert bool(trust_boxes.pointing_game(plateau, [far], [(16, 16)], POINTING, 0.0)[0])


def test_mass_inside_hand_computed() -> None:
    maps = torch.stack([torch.ones(8, 8), torch.zeros(8, 8)])
    maps[0, 0, 0] = 17.0  # inside: 16 + 16 pixels-worth of the total 63 + 17
    boxes = [[(0.0, 0.0, 8.0, 8.0)], [(0.0, 0.0, 8.0, 8.0)]]  # centres 2j + 1 <= 8: the top-left 4 x 4 pixels
    mass = trust_boxes.mass_inside(maps, boxes, [(16, 16), (16, 16)], POINTING)
    assert float(mass[0]) == pytest.approx(32 / 80) and math.isnan(float(mass[1]))  # zero map: NaN


@pytest.mark.slow
def test_pointing_and_mass_match_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(6, 8, 8, generator=g)
    corners = torch.randint(0, 6, (6, 2), generator=g)
    boxes = [[(float(x), float(y), float(x + 3), float(y + 2))] for x, y in corners.tolist()]
    same = Preprocess(resize=8, crop=8)  # identity geometry: a pixel is inside when its centre is
    masks = np.zeros((6, 1, 8, 8), dtype=np.float32)
    for i, (x, y) in enumerate(corners.tolist()):
        masks[i, 0, y:y + 2, x:x + 3] = 1
    args = {"model": None, "x_batch": np.zeros((6, 1, 8, 8), np.float32), "y_batch": np.zeros(6, int),
                "a_batch": maps.numpy()[:, None], "s_batch": masks}
    hits = quantus.PointingGame(disable_warnings=True)(**args)
    mass = quantus.RelevanceMassAccuracy(disable_warnings=True)(**args)
    ours = trust_boxes.pointing_game(maps, boxes, [(8, 8)] * 6, same, tolerance_px=0.0)
    assert ours.tolist() == [bool(h) for h in hits]
    np.testing.assert_allclose(trust_boxes.mass_inside(maps, boxes, [(8, 8)] * 6, same).numpy(), mass, atol=1e-6)


def test_read_boxes_csv_and_json(tmp_path: Path) -> None:
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("image,class,x0,y0,x1,y1\nchelsea.png,tabby,10,20,110.5,220\ncoffee.png,967,0,0,5,5\n")
    json_file = tmp_path / "boxes.json"
    json_file.write_text('[{"image": "chelsea.png", "class": "tabby", "x0": 10, "y0": 20, "x1": 110.5, "y1": 220},'
                         ' {"image": "coffee.png", "class": 967, "x0": 0, "y0": 0, "x1": 5, "y1": 5}]')
    expected = [trust_boxes.Box("chelsea.png", "tabby", 10, 20, 110.5, 220),
                trust_boxes.Box("coffee.png", "967", 0, 0, 5, 5)]
    assert trust_boxes.read_boxes(csv_file) == expected
    assert trust_boxes.read_boxes(json_file) == expected
    assert expected[0].rect == (10, 20, 110.5, 220)


@pytest.mark.parametrize(("name", "text", "message"), [
    ("boxes.csv", "image,class,x0,y0,x1,y1\na.png,cat,0,0,5,5\na.png,cat,9,0,5,5\n",
     "--boxes: {path} line 3: x1 must be greater than x0"),
    ("boxes.csv", "image,class,x0,y0,x1,y1\na.png,cat,0,5,5,5\n", "--boxes: {path} line 2: y1 must be greater than y0"),
    ("boxes.csv", "image,class,x0,y0,x1,y1\na.png,cat,0,zero,5,5\n",
     "--boxes: {path} line 2: y0 must be a number of pixels, not 'zero'"),
    ("boxes.csv", "image,class,x0,y0,x1,y1\n,cat,0,0,5,5\n", "--boxes: {path} line 2: image is missing"),
    ("boxes.csv", "image,label,x0,y0,x1,y1\n", ("--boxes: {path} line 1: the header must be image,class,x0,y0,x1,y1 "
     "(missing class)")),
    ("boxes.csv", "image,class,x0,y0,x1,y1\n", "--boxes: {path} holds no boxes"),
    ("boxes.json", '[{"image": "a.png", "class": "cat", "x0": 0, "y0": 0, "x1": 5, "y1": 5}, [1]]',
     "--boxes: {path} entry 2: must be an object with keys image, class, x0, y0, x1, y1"),
    ("boxes.json", '[{"image": "a.png", "class": "cat", "x0": 0, "y0": 0, "x1": true, "y1": 5}]',
     "--boxes: {path} entry 1: x1 must be a number of pixels, not True"),
    ("boxes.json", '{"image": "a.png"}', "--boxes: {path} must hold a list of objects"),
    ("boxes.json", "[{", "--boxes: {path} is not valid JSON"),
    ("boxes.txt", "a", "--boxes: {path} must be a .csv or .json file"),
])
def test_read_boxes_errors_name_file_and_line(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(AuditorError) as error:
        trust_boxes.read_boxes(path)
    assert str(error.value).startswith(message.format(path=path)) and "\n" not in str(error.value)


def test_read_boxes_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AuditorError, match="does not exist"):
        trust_boxes.read_boxes(tmp_path / "nope.csv")
