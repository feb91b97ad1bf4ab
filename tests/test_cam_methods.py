"""Score-CAM, LayerCAM, XGrad-CAM, HiResCAM and Eigen-CAM: hand computations on a fixed-weight model,
Score-CAM's empty-channel skip against a direct loop, pytorch-grad-cam as the oracle, shapes, and the
model left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from auditor.errors import AuditorError
from auditor.techniques import cam
from tests.fixtures_models import tiny
from tests.test_cam import Exploding, _correlations, _tokens_to_grid, _vit
from tests.toolkit import assert_unchanged, snapshot

NEW = ("score-cam", "layer-cam", "xgrad-cam", "hires-cam", "eigen-cam")
FUNCTIONS = {"score-cam": cam.score_cam, "layer-cam": cam.layer_cam, "xgrad-cam": cam.xgrad_cam,
             "hires-cam": cam.hires_cam, "eigen-cam": cam.eigen_cam}


class ThreeNet(nn.Module):
    """1x1 conv to three channels (weights 1, -1, 0.5; biases 0, 0, 1), ReLU, flatten, linear: each
    position has its own gradient (the linear weight), and channels overlap, so every map differs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU())
        self.fc = nn.Linear(12, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0, 0.5]).view(3, 1, 1, 1))
            self.features[0].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
            # rows: class; columns: channel-major, then positions (0,0), (0,1), (1,0), (1,1)
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, -1.0, 2.0, 0.5, 1.0, 0.0, 0.0, -1.0, 0.5, 1.0, 2.0],
                                               [2.0, 0.0, 1.0, -1.0, 1.0, -2.0, 0.5, 1.0, 0.5, -1.0, -1.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


# A0 = relu(x) = [[1, 0], [3, 0]], A1 = relu(-x) = [[0, 2], [0, 0]], A2 = relu(x / 2 + 1) = [[1.5, 0], [2.5, 1]]
X_HAND = torch.tensor([[1.0, -2.0], [3.0, 0.0]]).view(1, 1, 2, 2)


# ---------------------------------------------------------------- hand computations


def test_layer_cam_xgrad_cam_and_hires_cam_by_hand():
    result = cam.cam_maps(ThreeNet(), X_HAND, torch.tensor([[0, 1]]), "features",
                          methods=("layer-cam", "xgrad-cam", "hires-cam"))
    # gradients are the linear weights. HiResCAM = relu(sum_c g A), position by position:
    # class 0: (0,0) 1 - 1.5 = -0.5, (0,1) 2, (1,0) -3 + 2.5 = -0.5, (1,1) 2 * 1 = 2
    # class 1: (0,0) 2 + 0.75 = 2.75, (0,1) -4, (1,0) 3 - 2.5 = 0.5, (1,1) 0
    hires = torch.tensor([[[0.0, 2.0], [0.0, 2.0]], [[2.75, 0.0], [0.5, 0.0]]])
    # LayerCAM = relu(sum_c relu(g) A): class 0: (0,0) 1, (0,1) 2, (1,0) 2.5, (1,1) 2;
    # class 1: (0,0) 2 + 0.75, (0,1) 0, (1,0) 3, (1,1) 0
    layer = torch.tensor([[[1.0, 2.0], [2.5, 2.0]], [[2.75, 0.0], [3.0, 0.0]]])
    # XGrad-CAM: w_c = sum(g A) / sum(A), sum A = (4, 2, 5).
    # class 0: sum gA = (1 - 3, 2, -1.5 + 2.5 + 2) -> w = (-0.5, 1, 0.6); map -0.5 A0 + A1 + 0.6 A2
    #   = [[-0.5 + 0.9, 2], [-1.5 + 1.5, 0.6]]
    # class 1: sum gA = (2 + 3, -4, 0.75 - 2.5) -> w = (1.25, -2, -0.35); map 1.25 A0 - 2 A1 - 0.35 A2
    #   = [[1.25 - 0.525, -4], [3.75 - 0.875, -0.35]], ReLU
    xgrad = torch.tensor([[[0.4, 2.0], [0.0, 0.6]], [[0.725, 0.0], [2.875, 0.0]]])
    # tolerance: float32 rounding of sums of a few terms (0.6 and 0.35 are not exact in binary)
    assert torch.allclose(result.raw["hires-cam"][0], hires, atol=1e-6)
    assert torch.allclose(result.raw["layer-cam"][0], layer, atol=1e-6)
    assert torch.allclose(result.raw["xgrad-cam"][0], xgrad, atol=1e-6)


def test_xgrad_cam_gives_an_empty_channel_weight_zero_not_nan():
    x = torch.tensor([[1.0, 2.0], [3.0, 0.5]]).view(1, 1, 2, 2)  # x > 0: A1 = relu(-x) is all zero
    raw = cam.cam_maps(ThreeNet(), x, torch.tensor([0]), "features", methods=("xgrad-cam",)).raw["xgrad-cam"][0, 0]
    # A0 = x, A2 = x / 2 + 1 = [[1.5, 2], [2.5, 1.25]], sums 6.5 and 7.25;
    # w0 = (1 - 2 - 3 + 1) / 6.5 = -3 / 6.5, w2 = (-1.5 + 1 + 2.5 + 2.5) / 7.25 = 4.5 / 7.25, w1 = 0
    a0, a2 = x[0, 0], x[0, 0] / 2 + 1
    expected = (-3 / 6.5 * a0 + 4.5 / 7.25 * a2).relu()
    assert not raw.isnan().any()
    assert torch.allclose(raw, expected, atol=1e-6) and expected.amax() > 0


def test_eigen_cam_is_the_first_principal_component_with_a_fixed_sign():
    model = ThreeNet()
    result = cam.cam_maps(model, X_HAND, torch.tensor([[0, 1]]), "features", methods=("eigen-cam",))
    features = model.features(X_HAND).detach()[0]  # [3, 2, 2]
    matrix = features.flatten(1).T.double()
    matrix = matrix - matrix.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix.T @ matrix)  # the covariance's top eigenvector
    projection = matrix @ eigenvectors[:, -1]
    projection = projection if projection @ features.sum(dim=0).flatten().double() >= 0 else -projection
    assert eigenvalues[-1] > 1.5 * eigenvalues[-2]  # a well-separated top component: the direction is unique
    raw = result.raw["eigen-cam"][0]
    assert torch.equal(raw[0], raw[1])  # class-independent
    # tolerance: float32 SVD against a float64 eigendecomposition
    assert torch.allclose(raw[0].double(), projection.relu().view(2, 2), atol=1e-5)


def _slow_score_cam(model: nn.Module, x: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
                    target: str) -> torch.Tensor:
    """Score-CAM as pgc computes it: every image and channel run on its own (no skip, no folding), [N, K, h, w]."""
    maps = []
    for n in range(len(x)):
        scores = []
        for channel in features[n]:
            mask = F.interpolate(channel[None, None], size=x.shape[-2:], mode="bilinear", align_corners=True)
            mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-8)
            with torch.no_grad():
                logits = model(x[n:n + 1] * mask)[0]
            scores.append((logits.softmax(dim=0) if target == "prob" else logits)[targets[n]])
        weights = torch.stack(scores).softmax(dim=0)  # [C, K]
        maps.append(torch.einsum("ck,chw->khw", weights, features[n]).relu())
    return torch.stack(maps)


@pytest.mark.parametrize("target", ["logit", "prob"])
def test_score_cam_skip_of_empty_channels_equals_running_every_channel(target):
    model = tiny()
    with torch.no_grad():
        model.features[4].bias[:10] -= 100.0  # ten of the sixteen channels are zero after the ReLU
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([[1, 3], [4, 0]])
    features = model.features(x).detach()
    empty = features.amax(dim=(-2, -1)) == features.amin(dim=(-2, -1))
    assert empty[:, :10].all() and not empty[:, 10:].all()  # the skip is exercised, and not everything skipped
    rows = []
    counting = model.register_forward_pre_hook(lambda module, inputs: rows.append(len(inputs[0])))
    try:
        result = cam.cam_maps(model, x, targets, "features", target=target, methods=("score-cam",), batch_size=5)
    finally:
        counting.remove()
    # every non-empty pair (up to 12) plus one zero image, the first pass (2) and four 1-image probes
    # (BatchNorm folding and layout check): far fewer than the 32 image-channel pairs
    assert sum(rows) <= int((~empty).sum()) + 1 + 2 + 4 < 32
    expected = _slow_score_cam(model, x, features, targets, target)
    assert expected.amax() > 0
    # tolerance: float32 rounding of batched, folded convolutions against one image at a time
    torch.testing.assert_close(result.raw["score-cam"], expected, rtol=1e-5, atol=1e-6)
    other = cam.cam_maps(model, x, targets, "features", target=target, methods=("score-cam",), batch_size=64)
    torch.testing.assert_close(other.raw["score-cam"], result.raw["score-cam"], rtol=1e-5, atol=1e-6)


def test_score_cam_traced_masked_passes_equal_the_eager_ones(monkeypatch):
    model, x = tiny(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    targets = torch.tensor([[0, 2], [3, 1]])
    traced, original = [], cam._traced_forward

    def spy(model, batch, reference):
        run = original(model, batch, reference)
        traced.append(run is not model)
        return run

    eager = cam.cam_maps(model, x, targets, "features", methods=("score-cam",), batch_size=64)  # one batch
    monkeypatch.setattr(cam, "_traced_forward", spy)
    batches = cam.cam_maps(model, x, targets, "features", methods=("score-cam",), batch_size=3)  # 11 batches
    monkeypatch.undo()
    assert traced == [True]  # TinyNet traces, and the last batch (2 of 3) is padded to the trace's size
    assert eager.raw["score-cam"].amax() > 0
    # tolerance: float32 rounding of oneDNN's frozen convolutions against the eager ones
    torch.testing.assert_close(batches.raw["score-cam"], eager.raw["score-cam"], rtol=1e-4, atol=1e-6)


class _ValueBranch(nn.Module):
    """Python control flow on a tensor value: a trace would freeze one branch, so Score-CAM must not trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits if bool(x.mean() > 0) else -logits


def test_score_cam_does_not_trace_a_model_whose_trace_warns():
    model = _ValueBranch()
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert cam._traced_forward(model, batch, model(batch)) is model
        plain = tiny()
        assert cam._traced_forward(plain, batch, plain(batch)) is not plain


def test_score_cam_masked_passes_leave_the_captured_layer_and_gradients_alone():
    model, x = tiny(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([[0, 2], [3, 1]])
    together = cam.cam_maps(model, x, targets, "features", methods=("score-cam", "layer-cam", "hires-cam"))
    for method in ("layer-cam", "hires-cam"):  # gradients taken after the masked passes: the same graph
        alone = cam.cam_maps(model, x, targets, "features", methods=(method,))
        assert torch.equal(together.raw[method], alone.raw[method])
    assert torch.equal(together.logits, cam.cam_maps(model, x, targets, "features", methods=("eigen-cam",)).logits)


def test_batch_size_must_be_positive():
    with pytest.raises(AuditorError, match="cam batch size"):
        cam.cam_maps(tiny(), torch.randn(1, 3, 32, 32), torch.tensor([0]), batch_size=0)


# ---------------------------------------------------------------- shapes and ranges


def test_single_targets_and_class_batches_give_maps_in_the_unit_range():
    model, x = tiny(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([[0, 3, 1], [2, 2, 4]])
    for method, function in FUNCTIONS.items():
        batched = function(model, "features", x, targets)
        assert batched.shape == (2, 3, 32, 32)
        assert float(batched.min()) == 0.0 and float(batched.max()) == pytest.approx(1.0, abs=1e-6)
        for k in range(3):  # K columns at once equal K separate calls (tolerance: float32 rounding)
            single = function(model, "features", x, targets[:, k])
            assert single.shape == (2, 32, 32)
            assert torch.allclose(batched[:, k], single, atol=1e-5), method
        if method == "eigen-cam":
            assert torch.equal(batched[:, 0], batched[:, 1]) and torch.equal(batched[:, 0], batched[:, 2])
        else:  # class-dependent: different classes of one image give different maps
            assert not torch.allclose(batched[0, 0], batched[0, 1], atol=1e-3), method


# ---------------------------------------------------------------- pytorch-grad-cam as the oracle


def _signed_eigen_cam():
    """pgc's EigenCAM with our sign convention: its projection, flipped where its dot product with the
    channel sum of the activations is negative. Without it the comparison would test LAPACK's arbitrary
    sign. Measured on the ORACLE_CASES images: torch's SVD sign equalled numpy's on every image, and our
    convention flips numpy's on one of the two images of vgg11, mobilenet_v3_small and vit_b_16 (there
    pgc's plain EigenCAM keeps the other half of the projection)."""
    from pytorch_grad_cam import EigenCAM
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    class SignedEigenCAM(EigenCAM):
        def get_cam_image(self, input_tensor, target_layer, target_category, activations, grads, eigen_smooth):
            projection = get_2d_projection(activations)
            agreement = (projection * activations.sum(axis=1)).reshape(len(projection), -1).sum(axis=1)
            return np.where(agreement[:, None, None] < 0, -projection, projection)

    return SignedEigenCAM


def _pgc_classes() -> dict[str, type]:
    from pytorch_grad_cam import HiResCAM, LayerCAM, ScoreCAM, XGradCAM

    return {"score-cam": ScoreCAM, "layer-cam": LayerCAM, "xgrad-cam": XGradCAM, "hires-cam": HiResCAM,
            "eigen-cam": _signed_eigen_cam()}


def _compare_with_pgc(model: nn.Module, layer: str, transform, size: int) -> None:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    result = cam.cam_maps(model, x, targets, layer, methods=NEW)
    for method, pgc in _pgc_classes().items():
        with pgc(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=transform) as ref:
            ref.batch_size = 256  # Score-CAM's masked inputs per pass (pgc's default is 16)
            theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        # Pearson r > 0.99 per map: the libraries differ only in upsampling and normalisation order (ours:
        # bilinear then min-max; pgc: min-max then cv2 resize) and XGrad-CAM's eps (see cam.py)
        correlations = _correlations(result.maps[method][:, 0].numpy(), theirs)
        assert any(c is not None for c in correlations), (method, "every map is empty: the comparison is vacuous")
        assert all(c is None or c > 0.99 for c in correlations), (method, correlations)


def test_agrees_with_pytorch_grad_cam_on_resnet18_quickly():
    torch.manual_seed(0)
    # layer3 at 32 px: a 2 x 2 grid of 256 channels, so Score-CAM's 512 masked passes take well under a second
    _compare_with_pgc(torchvision.models.resnet18().eval(), "layer3", None, 32)


def _mobilenet_v3_small() -> nn.Module:
    model = torchvision.models.mobilenet_v3_small()
    with torch.no_grad():
        # random mobilenet_v3_small's last features are ~1e-8 per position: pgc's XGrad-CAM eps (1e-7 added
        # to sum_ij A) then outweighs the sums and changes its weights (measured r = -0.996 and 0.30);
        # scaling the last conv by 1e4 (its eval-mode BatchNorm passes the scale on) makes eps negligible
        model.features[12][0].weight.mul_(1e4)
    return model


# (factory, layer given to both libraries, pgc reshape transform, input size)
ORACLE_CASES = {
    "resnet18": (torchvision.models.resnet18, "layer4", None, 64),
    "resnet50": (torchvision.models.resnet50, "layer4", None, 64),
    "vgg11": (torchvision.models.vgg11, "features", None, 64),
    # DenseNet relu_()s `features` in place (see tests/test_cam.py): compare one block down
    "densenet121": (torchvision.models.densenet121, "features.denseblock4", None, 64),
    "mobilenet_v3_small": (_mobilenet_v3_small, "features", None, 64),
    "vit_b_16": (_vit, "encoder.layers.encoder_layer_11.ln_1", _tokens_to_grid, 64),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_agrees_with_pytorch_grad_cam(name):
    factory, layer, transform, size = ORACLE_CASES[name]
    torch.manual_seed(0)
    _compare_with_pgc(factory().eval(), layer, transform, size)


# ---------------------------------------------------------------- the model is left as found


class RaisesOnMaskedPasses(nn.Module):
    """The tiny model, failing on any batch of more than two images: Score-CAM's masked passes (after
    its BatchNorm folding and layout probes, which run one image) raise inside the folded network."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 2:
            raise RuntimeError("boom")
        return self.inner(x)


def test_model_left_as_found_also_when_the_call_raises():
    model = tiny()
    model.features[1].train()  # a mixed-mode model: one BatchNorm in training mode
    model.features[0].weight.requires_grad_(False)
    before = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    cam.cam_maps(model, x, torch.tensor([[0, 1], [2, 3]]), methods=NEW)
    assert_unchanged(model, before)
    cam.cam_maps(model, x, torch.tensor([[0, 1], [2, 3]]), methods=("score-cam",), batch_size=2)  # traced
    assert_unchanged(model, before)
    exploding = Exploding()
    before = snapshot(exploding)
    for method in NEW:
        for layer in (None, "inner.features"):
            with pytest.raises(RuntimeError, match="boom"):
                FUNCTIONS[method](exploding, layer, x, torch.tensor([0, 1]))
            assert_unchanged(exploding, before)
    failing = RaisesOnMaskedPasses()
    before = snapshot(failing)
    with pytest.raises(RuntimeError, match="boom"):
        cam.cam_maps(failing, x, torch.tensor([0, 1]), "inner.features", methods=("score-cam",), batch_size=4)
    assert_unchanged(failing, before)  # folded weights swapped back, BatchNorm forwards restored, no hook left
