"""CAM, Grad-CAM and Grad-CAM++: hand computations on fixed-weight models, peer libraries as oracles
(pytorch-grad-cam, captum), localisation on real photos, and the model left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from auditor.errors import AuditorError
from auditor.techniques import cam
from auditor.techniques.cam_layers import Layout, detect_layout
from tests.fixtures_models import tiny, tiny_swin
from tests.toolkit import assert_unchanged, snapshot

PHOTOS = "auditor/data/photos/"


class GapNet(nn.Module):
    """1x1 conv to two channels, functional in-place ReLU (as DenseNet does after `features`), global
    average pooling, linear head. Weights fixed so every map is computed by hand below."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.features(x), inplace=True).mean(dim=(2, 3)))


class FlatNet(nn.Module):
    """Conv, ReLU, flatten, linear: no pooling, so each position has its own gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU())
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.25, 1.0, 0.5, -0.5, 1.5],
                                               [-1.0, 0.5, 1.0, 2.0, -0.25, 1.0, 0.75, -2.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


X_HAND = torch.tensor([[1.0, -2.0], [3.0, 0.0]]).view(1, 1, 2, 2)  # A0 = relu(x), A1 = relu(-x)


# ---------------------------------------------------------------- hand computations


def test_cam_is_the_head_weighted_feature_sum():
    result = cam.cam_maps(GapNet(), X_HAND, torch.tensor([[0, 1]]))
    # A0 = [[1, 0], [3, 0]], A1 = [[0, 2], [0, 0]]; class 0 = A0 + 2 A1, class 1 = 3 A0 - A1
    expected = torch.tensor([[[1.0, 4.0], [3.0, 0.0]], [[3.0, -2.0], [9.0, 0.0]]])
    assert torch.allclose(result.raw["cam"][0], expected, atol=1e-6)
    # the spatial mean of the CAM plus the bias is the logit: 0.5 + 2 = 2.5 and -0.5 + 2.5 = 2.0
    assert torch.allclose(result.logits, torch.tensor([[2.5, 2.0]]))
    assert result.cam_unavailable is None


def test_grad_cam_and_grad_cam_pp_by_hand():
    result = cam.cam_maps(GapNet(), X_HAND, torch.tensor([[0, 1]]))
    # gradients are W[c, k] / 4 everywhere (mean pooling over 4 positions, taken after the in-place ReLU)
    grad_cam = torch.tensor([[[0.25, 1.0], [0.75, 0.0]], [[0.75, 0.0], [2.25, 0.0]]])
    # class 0: g = (1/4, 1/2), sum A = (4, 2): alpha = 1 / (2 + sum A g) = (1/3, 1/3), w = 4 alpha g = (1/3, 2/3)
    # class 1: g = (3/4, -1/4): alpha0 = 1/5, w = (3/5, 0)
    grad_cam_pp = torch.tensor([[[1 / 3, 4 / 3], [1.0, 0.0]], [[0.6, 0.0], [1.8, 0.0]]])
    assert torch.allclose(result.raw["grad-cam"][0], grad_cam, atol=1e-6)
    assert torch.allclose(result.raw["grad-cam++"][0], grad_cam_pp, atol=1e-6)


def _paper_grad_cam_pp(model: FlatNet, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Eq. 19 of Chattopadhay et al. from the true 1st-3rd derivatives of Y = exp(S), element by element."""
    features = model.features(x).detach().requires_grad_(True)
    y = model.fc(features.flatten(1))[0, cls].exp()
    (d1,) = torch.autograd.grad(y, features, create_graph=True)
    d2, d3 = torch.zeros_like(features), torch.zeros_like(features)
    for index in np.ndindex(*features.shape):
        (second,) = torch.autograd.grad(d1[index], features, create_graph=True)
        (third,) = torch.autograd.grad(second[index], features, retain_graph=True)
        d2[index], d3[index] = second[index], third[index]
    a = features.detach()
    alpha = d2 / (2 * d2 + a.sum(dim=(2, 3), keepdim=True) * d3)
    weights = (alpha * d1.detach().relu()).sum(dim=(2, 3), keepdim=True)
    return (weights * a).sum(dim=1)[0].relu()


def test_grad_cam_pp_follows_the_paper_with_spatially_varying_gradients():
    model = FlatNet()
    result = cam.cam_maps(model, X_HAND, torch.tensor([[0, 1]]), "features", methods=("grad-cam++",))
    for cls in (0, 1):
        # the paper's map is exp(S) times ours (the exp trick factors exp(S) out of the weights)
        expected = _paper_grad_cam_pp(model, X_HAND, cls) / result.logits[0, cls].exp()
        assert torch.allclose(result.raw["grad-cam++"][0, cls], expected, rtol=1e-5, atol=1e-7)
        assert expected.amax() > 0  # a real comparison, not zeros against zeros


def test_cam_does_not_apply_without_a_pooling_head():
    result = cam.cam_maps(FlatNet(), X_HAND, torch.tensor([0]), "features")
    assert "cam" not in result.maps and set(result.maps) == set(cam.METHODS) - {"cam", "score-cam"}  # Score-CAM: when asked
    assert result.cam_unavailable == ("the head is not global average pooling + one linear layer: the last linear "
                                      "layer 'fc' reads (8,) features, not the 2 channels of 'features'")
    with pytest.raises(cam.CamNotApplicable, match="CAM does not apply: the head is not"):
        cam.class_activation_map(FlatNet(), "features", X_HAND, torch.tensor([0]))


def test_maps_are_upsampled_and_normalised_per_map():
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    maps = cam.class_activation_map(tiny(), None, x, torch.tensor([[0, 1, 2], [3, 4, 0]]))  # no ReLU: never empty
    assert maps.shape == (2, 3, 32, 48)
    for m in maps.flatten(0, 1):
        assert float(m.min()) == 0.0 and float(m.max()) == pytest.approx(1.0, abs=1e-6)  # float32 rounding
    raw = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 3.0], [1.0, 1.0]]]])
    out = cam.upsample_normalise(raw, (4, 4))
    assert torch.equal(out[0, 0], torch.zeros(4, 4))  # an all-zero map stays zero, no NaN
    # bilinear, half-pixel centres: output (0, 3) samples input (0, 1) exactly -> (3 - 1) / (3 - 1) = 1
    assert out[0, 1, 0, 3] == 1.0 and out[0, 1, 3, 0] == 0.0


def test_one_method_functions_squeeze_single_targets_and_batch_classes():
    model, x = tiny(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([[0, 3, 1], [2, 2, 4]])
    for function in (cam.class_activation_map, cam.grad_cam, cam.grad_cam_pp):
        batched = function(model, "features", x, targets)
        for k in range(3):  # K classes in one backward equal K separate calls (tolerance: float32 rounding)
            single = function(model, "features", x, targets[:, k])
            assert single.shape == (2, 32, 32)
            assert torch.allclose(batched[:, k], single, atol=1e-5)


# ---------------------------------------------------------------- peer libraries as oracles


def test_raw_grad_cam_equals_captum_layer_grad_cam():
    from captum.attr import LayerGradCam

    model, x = tiny(), torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([1, 4])
    for target, forward in (("logit", model), ("prob", lambda inp: model(inp).softmax(dim=1))):
        ours = cam.cam_maps(model, x, targets, "features", target=target).raw["grad-cam"][:, 0]
        theirs = LayerGradCam(forward, model.features).attribute(x, target=targets, relu_attributions=True)[:, 0]
        assert theirs.amax() > 0
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6 * float(theirs.detach().abs().max()))


def _vit() -> nn.Module:
    model = torchvision.models.vit_b_16(image_size=64).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    return model


def _tokens_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape transform, for a 4 x 4 patch grid."""
    return tensor[:, 1:, :].reshape(tensor.size(0), 4, 4, tensor.size(2)).permute(0, 3, 1, 2)


# (factory, automatic layer, layer given to both libraries, pgc reshape transform, head, input size)
ORACLE_CASES = {
    "resnet50": (torchvision.models.resnet50, "layer4", "layer4", None, "fc", 64),
    "vgg16": (torchvision.models.vgg16, "features", "features", None, "classifier.6", 64),
    # DenseNet relu_()s `features` in place: pgc pairs the post-ReLU activation with the pre-ReLU
    # gradient there, so the libraries are compared one block down (GapNet checks the in-place case by hand)
    "densenet121": (torchvision.models.densenet121, "features", "features.denseblock4", None, "classifier", 64),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, "features", "features", None, "classifier.3", 64),
    "vit_b_16": (_vit, "encoder.layers.encoder_layer_11.ln_1", "encoder.layers.encoder_layer_11.ln_1",
                 _tokens_to_grid, "heads.head", 64),
    "swin_t": (torchvision.models.swin_t, "permute", "norm", lambda t: t.permute(0, 3, 1, 2), "head", 64),
    "maxvit_t": (torchvision.models.maxvit_t, "blocks.3", "blocks.3", None, "classifier.5", 224),  # 7 x 7 windows
}


def _correlations(ours: np.ndarray, theirs: np.ndarray) -> list[float | None]:
    """Pearson correlation per map; None where both maps are constant (all zero after the ReLU)."""
    result = []
    for a, b in zip(ours.reshape(len(ours), -1), theirs.reshape(len(theirs), -1), strict=True):
        assert (a.std() == 0) == (b.std() < 1e-6)
        result.append(None if a.std() == 0 else float(np.corrcoef(a, b)[0, 1]))
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORACLE_CASES))
def test_agrees_with_pytorch_grad_cam(name):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    factory, automatic, layer, transform, head, size = ORACLE_CASES[name]
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        # pgc adds eps = 1e-6 to the ++ denominator 2 g^2 + ...; random-weight gradients near 1e-4 would
        # drown in it. Scaling the head by 100 scales g by 100, keeps Grad-CAM's map, makes eps negligible.
        model.get_submodule(head).weight.mul_(100)
    x = torch.randn(2, 3, size, size)
    assert cam.choose_layer(model, x).name == automatic
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
    result = cam.cam_maps(model, x, targets, layer, methods=("grad-cam", "grad-cam++"))
    for method, pgc in (("grad-cam", GradCAM), ("grad-cam++", GradCAMPlusPlus)):
        with pgc(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=transform) as ref:
            theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        correlations = _correlations(result.maps[method][:, 0].numpy(), theirs)
        assert any(c is not None for c in correlations), "every map is empty: the comparison would be vacuous"
        assert all(c is None or c > 0.99 for c in correlations), (method, correlations)


def test_swin_channels_last_and_automatic_layer_give_the_same_maps():
    model = tiny_swin()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    channels_last = cam.cam_maps(model, x, torch.tensor([1, 2]), "norm")
    automatic = cam.cam_maps(model, x, torch.tensor([1, 2]), "permute")
    assert channels_last.formed == "channels-last output (N x 2 x 2 x C) permuted to channels first"
    assert channels_last.cam_unavailable is None  # Swin's head is global average pooling + linear
    for method in channels_last.maps:
        assert torch.allclose(channels_last.maps[method], automatic.maps[method], atol=1e-6)


# ---------------------------------------------------------------- the default model on real photos


def _cat_and_coffee(preprocess) -> torch.Tensor:
    """One 224 x 224 input: the cat photo squeezed into the left half, the espresso into the right."""
    cat = preprocess.display(Image.open(PHOTOS + "chelsea.png")).resize((112, 224))
    cup = preprocess.display(Image.open(PHOTOS + "coffee.png")).resize((112, 224))
    canvas = Image.new("RGB", (224, 224))
    canvas.paste(cat, (0, 0))
    canvas.paste(cup, (112, 0))
    return preprocess.to_tensor(canvas)[None]


@pytest.fixture(scope="module")
def lite0_composite(lite0_model):
    x = _cat_and_coffee(lite0_model.preprocess)
    with torch.no_grad():
        probabilities = lite0_model.module(x).softmax(dim=1)[0]
    cat = max(range(281, 286), key=lambda i: float(probabilities[i]))  # tabby, tiger cat, ... Egyptian cat
    return x, torch.tensor([[cat, 967]]), cam.cam_maps(lite0_model.module, x, torch.tensor([[cat, 967]]))


def test_maps_localise_the_cat_and_the_espresso(lite0_composite):
    _, _, result = lite0_composite
    assert result.layer.name == "_swish"  # the shared ReLU6, by its last call (after _bn1)
    for method, least in (("cam", 0.75), ("grad-cam", 0.75), ("grad-cam++", 0.6)):
        maps = result.maps[method][0]
        left = maps[..., :112].sum(dim=(-2, -1)) / maps.sum(dim=(-2, -1))
        # measured: cam 0.87 / 0.80, grad-cam 0.94 / 0.88, grad-cam++ 0.71 / 0.66
        assert left[0] > least, (method, "cat", float(left[0]))
        assert 1 - left[1] > least, (method, "espresso", float(1 - left[1]))


def test_reused_relu6_is_captured_at_its_last_call(lite0_model, lite0_composite):
    x, targets, result = lite0_composite
    model = lite0_model.module
    with torch.no_grad():
        features = model.extract_features(x)  # ends with _swish(_bn1(_conv_head(...))), _swish's 2nd call
    features.requires_grad_(True)
    logits = model._fc(features.mean(dim=(2, 3)))
    assert torch.allclose(logits, result.logits, atol=1e-4)
    expected = []
    for cls in targets[0]:
        (grad,) = torch.autograd.grad(logits[0, cls], features, retain_graph=True)
        expected.append((grad.mean(dim=(2, 3), keepdim=True) * features).sum(dim=1).relu()[0])
    assert torch.allclose(result.raw["grad-cam"][0], torch.stack(expected), rtol=1e-4, atol=1e-6)
    # CAM on the real head: spatial mean plus bias is the logit (tolerance: float32 sums of 1280 terms)
    means = result.raw["cam"][0].mean(dim=(-2, -1)) + model._fc.bias[targets[0]]
    assert torch.allclose(means, result.logits[0, targets[0]], atol=1e-4)


@pytest.mark.slow
def test_grad_cam_pp_agrees_with_pytorch_grad_cam_on_real_weights(lite0_model, lite0_composite):
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, targets, _ = lite0_composite
    model = lite0_model.module
    # pgc hooks every call of a reused module and keeps the first (the stem's): compare at _conv_head.
    # Measured 0.998 / 0.999; the rest is pgc's eps = 1e-6 in the denominator (with it added, ours
    # matches to 1e-13; at _bn1, whose gradients are smaller, eps costs more: 0.985).
    ours = cam.grad_cam_pp(model, "_conv_head", x, targets)[0]
    with GradCAMPlusPlus(model=model, target_layers=[model._conv_head]) as ref:
        theirs = ref(input_tensor=x.expand(2, -1, -1, -1), targets=[ClassifierOutputTarget(int(t)) for t in targets[0]])
    for k in range(2):
        assert np.corrcoef(ours[k].numpy().ravel(), theirs[k].ravel())[0, 1] > 0.99


# ---------------------------------------------------------------- layers and layouts


@pytest.mark.parametrize("shape, size, expected", [
    ((2, 768, 2, 2), (64, 64), Layout("channels-first", (2, 2))),
    ((2, 2, 2, 768), (64, 64), Layout("channels-last", (2, 2))),
    ((2, 7, 7, 7), (224, 224), Layout("channels-first", (7, 7))),  # ambiguous: channels first
    ((2, 2048, 7, 5), (224, 160), Layout("channels-first", (7, 5))),
    ((2, 197, 768), (224, 224), Layout("tokens", (14, 14), 1)),  # ViT-B/16: class token
    ((2, 201, 768), (224, 224), Layout("tokens", (14, 14), 5)),  # class token + 4 registers
    ((2, 49, 768), (224, 224), Layout("tokens", (7, 7), 0)),  # Swin (timm): no extra token
    ((2, 2048, 1, 1), (224, 224), None),  # pooled: no grid
    ((2, 1000), (224, 224), None),
])
def test_detect_layout(shape, size, expected):
    assert detect_layout(shape, size) == expected


def test_token_layout_drops_the_class_token_and_reshapes_row_major():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)  # 1 class token + 2 x 2 patches, C = 3
    layout = detect_layout(tokens.shape, (32, 32))
    grid = layout.channels_first(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[1, 2], tokens[1, 1:, 2].view(2, 2))
    assert layout.describe((32, 32)) == ("tokens reshaped to a 2 x 2 grid (16 px patches), "
                                         "1 leading token (the class token) dropped")


def test_layer_given_as_module_name_or_automatic_is_the_same():
    model, x = tiny(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    targets = torch.tensor([0, 1])
    by_name = cam.cam_maps(model, x, targets, "features")
    by_module = cam.cam_maps(model, x, targets, model.features)
    automatic = cam.cam_maps(model, x, targets)
    assert automatic.layer.name == "features" and by_module.layer.name == "features"
    assert automatic.layer.reason == ("automatic: the last layer with a spatial output (channels-first, 8 x 8) "
                                      "that the class scores depend on")
    assert by_name.layer.reason == "given"
    for method in by_name.maps:
        assert torch.equal(by_name.maps[method], by_module.maps[method])
        assert torch.equal(by_name.maps[method], automatic.maps[method])


@pytest.mark.parametrize("call, message", [
    (lambda m, x, t: cam.cam_maps(m, x, t, "featurs"), "--cam-layer: tinynet has no layer 'featurs'; "
     "close names: features"),
    (lambda m, x, t: cam.cam_maps(m, x, t, nn.ReLU()), "--cam-layer: the ReLU given is not a module of tinynet"),
    (lambda m, x, t: cam.cam_maps(m, x, t, "classifier"),
     "--cam-layer classifier: its output (2, 5) has no spatial grid"),
    (lambda m, x, t: cam.cam_maps(m, x, t, target="score"), "--cam-target: 'score' is not a target; use logit or prob"),
    (lambda m, x, t: cam.cam_maps(m, x, t + 5), "cam targets: class indices must be in 0..4, got 5..6"),
    (lambda m, x, t: cam.cam_maps(m, x, t.float()), "cam targets: give class indices as a LongTensor"),
])
def test_user_errors_name_the_option(call, message):
    model, x = tiny(), torch.randn(2, 3, 32, 32)
    with pytest.raises(AuditorError) as error:
        call(model, x, torch.tensor([0, 1]))
    assert str(error.value).startswith(message)


def test_automatic_choice_needs_a_spatial_layer_the_scores_depend_on():
    model = tiny()
    with torch.no_grad():
        model.classifier.weight.zero_()  # as torchvision's untrained ViT head: no score depends on anything
    with pytest.raises(AuditorError, match="--cam-layer: the class scores depend on no spatial layer"):
        cam.choose_layer(model, torch.randn(1, 3, 32, 32))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(AuditorError, match="--cam-layer: no layer of the model has a spatial output"):
        cam.choose_layer(mlp, torch.randn(1, 3, 2, 2))


# ---------------------------------------------------------------- the model is left as found


class Exploding(nn.Module):
    """Runs the tiny model's features, then fails: hooks must still be removed."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inner.features(x)
        raise RuntimeError("boom")


def test_model_left_as_found_also_when_the_call_raises():
    model = tiny()
    model.features[1].train()  # a mixed-mode model: one BatchNorm in training mode
    model.features[0].weight.requires_grad_(False)
    model.features[2].inplace = True
    before = snapshot(model)
    x = torch.randn(2, 3, 32, 32)
    cam.cam_maps(model, x, torch.tensor([[0, 1], [2, 3]]))
    assert_unchanged(model, before)
    for bad in ("classifier", "featurs"):
        with pytest.raises(AuditorError):
            cam.cam_maps(model, x, torch.tensor([0, 1]), bad)
        assert_unchanged(model, before)
    exploding = Exploding()
    before = snapshot(exploding)
    for layer in (None, "inner.features"):  # raises inside the probe and inside the capture forward
        with pytest.raises(RuntimeError, match="boom"):
            cam.cam_maps(exploding, x, torch.tensor([0, 1]), layer)
        assert_unchanged(exploding, before)


def test_default_model_left_as_found(lite0_model):
    model = lite0_model.module
    before = snapshot(model)
    cam.cam_maps(model, torch.randn(2, 3, 64, 64), torch.tensor([1, 2]))
    assert_unchanged(model, before)
