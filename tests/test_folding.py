"""BatchNorm, zero-padding and in-place rectifier folding: the folded network computes what the model
computes, without a BatchNorm (or padding) call, and the model is exactly as before afterwards (the same
tensor objects, no attribute left on a module); pairs that cannot be folded are left alone."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.overrides import TorchFunctionMode

from auditor.nn.folding import fold_pairs, folded_batch_norms
from auditor.nn.hooks import truncated_forward
from auditor.nn.restore import audit_mode
from tests.fixtures_models import tiny
from tests.toolkit import assert_unchanged, snapshot


class Calls(TorchFunctionMode):
    """Counts the calls of one torch function (F.batch_norm, F.pad), whichever module makes them."""

    def __init__(self, counted) -> None:
        super().__init__()
        self.counted = counted
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func is self.counted
        return func(*args, **(kwargs or {}))



class SkipOverNorm(nn.Module):
    """The convolution's output feeds the BatchNorm and, unnormalised, the sum after it: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.out(self.norm(y) + y)


def randomise_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            count = module.num_features
            module.running_mean.copy_(torch.rand(count, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(count, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(count, generator=generator) - 0.5)
    return model.eval()


def layer_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with truncated_forward(model, layer) as run, torch.no_grad():
        return run(x)


def test_tiny_net_folds_both_pairs_and_matches_the_hand_folded_weights():
    model = tiny().double()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer = model.features[5]
    expected = layer_output(model, layer, x)
    conv, norm = model.features[0], model.features[1]
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    hand_weight = conv.weight * scale[:, None, None, None]
    hand_bias = (conv.bias - norm.running_mean) * scale + norm.bias
    before = snapshot(model)
    with folded_batch_norms(model, layer, x[:1]) as folded, Calls(torch.nn.functional.batch_norm) as counter:
        output = layer_output(model, layer, x)
        torch.testing.assert_close(conv.weight, hand_weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(conv.bias, hand_bias, rtol=1e-12, atol=1e-12)
    assert folded == 2 and counter.count == 0
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)  # float64: rounding only
    assert_unchanged(model, before)


def test_resnet18_folds_every_pair_before_the_layer_and_agrees_in_float32():
    model = randomise_statistics(torchvision.models.resnet18())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    layer = model.layer2
    expected = layer_output(model, layer, x)
    before = snapshot(model)
    # conv1 + bn1; layer1: 2 blocks x 2; layer2: 2 blocks x 2 and one downsample
    assert len(fold_pairs(model, layer, x[:1])[0].norms) == 10
    with audit_mode(model), folded_batch_norms(model, layer, x[:1]) as folded, Calls(torch.nn.functional.batch_norm) as counter:
        output = layer_output(model, layer, x)
    assert folded == 10 and counter.count == 0
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert_unchanged(model, before)


def test_a_convolution_output_used_beside_its_norm_is_not_folded():
    model = randomise_statistics(SkipOverNorm())
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = layer_output(model, model.out, x)
    assert len(fold_pairs(model, model.out, x)[0].norms) == 1  # the pair looks foldable from the calls alone
    before = snapshot(model)
    with folded_batch_norms(model, model.out, x) as folded:
        assert folded == 0  # the check on the example finds the folded output differs
        assert torch.equal(layer_output(model, model.out, x), expected)
    assert_unchanged(model, before)


@pytest.mark.parametrize("case", ["training", "hooked norm", "hooked convolution", "norm is the layer",
                                  "norm runs twice"])
def test_unfoldable_pairs_are_skipped(case):
    model = tiny()
    layer = model.features[5]
    conv, norm = model.features[3], model.features[4]
    handles = []
    if case == "training":
        norm.train()
    elif case == "hooked norm":
        handles.append(norm.register_forward_hook(lambda m, i, o: None))
    elif case == "hooked convolution":
        handles.append(conv.register_forward_pre_hook(lambda m, i: None))
    elif case == "norm is the layer":
        layer = norm
    else:
        model.features[4] = nn.Sequential(norm, nn.Conv2d(16, 16, 1), norm)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    pairs = fold_pairs(model, layer, x)[0].norms
    assert (model.features[0], model.features[1]) in pairs and all(conv is not c for c, _ in pairs)
    for handle in handles:
        handle.remove()


def test_a_failing_forward_inside_the_block_still_restores_the_model():
    model = tiny()
    before = snapshot(model)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with pytest.raises(RuntimeError, match="channels"), folded_batch_norms(model, model.features[5], x) as folded:
        assert folded == 2
        layer_output(model, model.features[5], torch.randn(1, 5, 16, 16))  # 5 channels where 3 are expected
    assert_unchanged(model, before)


@pytest.mark.parametrize("kept", ["features.3", "features.4", "features"])
def test_a_kept_layer_gives_exactly_its_own_output_while_the_whole_model_is_folded(kept):
    """The CAM layer is captured by a hook set up inside the block: folding the whole model (the model
    itself as `layer`) must leave that layer's output exactly the model's, not a folded convolution's."""
    model = tiny()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    module = dict(model.named_modules())[kept]
    captured: list[torch.Tensor] = []
    expected = layer_output(model, module, x)
    logits = model(x).detach()
    before = snapshot(model)
    with folded_batch_norms(model, model, x[:1], keep=[module]) as folded:
        assert folded == {"features.3": 1, "features.4": 1, "features": 0}[kept]
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
        with torch.no_grad():
            output = model(x)
        handle.remove()
    # the layer itself is not folded: its output is the model's up to the rounding of the folds before it
    torch.testing.assert_close(captured[0], expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    if kept == "features.3":  # folded, the convolution would output its BatchNorm's result instead
        with folded_batch_norms(model, model, x[:1]) as folded:
            assert folded == 2
            assert not torch.allclose(layer_output(model, module, x), expected, atol=1e-2)
    torch.testing.assert_close(output, logits, rtol=1e-5, atol=1e-6)
    assert_unchanged(model, before)


def test_the_whole_model_as_layer_folds_every_pair_and_a_fold_inside_a_fold_folds_nothing_more():
    model = tiny()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    expected = model(x).detach()
    before = snapshot(model)
    with folded_batch_norms(model, model, x[:1]) as folded, Calls(torch.nn.functional.batch_norm) as counter:
        assert folded == 2
        with folded_batch_norms(model, model, x[:1]) as inner:  # Score-CAM's fold inside the trust section's
            assert inner == 0
        with torch.no_grad():
            output = model(x)  # the outer fold is still whole after the inner one ended
    assert counter.count == 0
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    assert_unchanged(model, before)


class SamePadConv(nn.Conv2d):
    """EfficientNet-PyTorch's Conv2dStaticSamePadding: a ZeroPad2d child pads the input, then the convolution
    (padding 0) runs; `after` pads the output instead, which folding must not mistake for the same thing."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int, pad: tuple[int, ...],
                 groups: int = 1, after: bool = False) -> None:
        super().__init__(channels_in, channels_out, kernel, stride, padding=0, groups=groups, bias=False)
        self.static_padding = nn.ZeroPad2d(pad)
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.after:
            return self.static_padding(super().forward(x))
        return super().forward(self.static_padding(x))


def same_padded_net(after: bool = False) -> nn.Module:
    """TensorFlow "same" padding as EfficientNet pads: stride 2 one more below and right, 5 x 5 depthwise."""
    torch.manual_seed(0)
    return randomise_statistics(nn.Sequential(
        SamePadConv(3, 8, 3, 2, (0, 1, 0, 1)), nn.BatchNorm2d(8), nn.ReLU6(),
        SamePadConv(8, 8, 5, 1, (2, 2, 2, 2), groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
        SamePadConv(8, 8, 5, 2, (1, 2, 1, 2), groups=8, after=after), nn.Identity() if after else nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))).double()


def test_zero_paddings_fold_into_their_convolutions_even_and_uneven():
    """Each padding becomes the convolution's own (uneven sides: the larger, and a kernel grown by zeros on
    the side padded less): the same output with no padding call, and the model exactly as before after."""
    model = same_padded_net()
    x = torch.randn(2, 3, 17, 17, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = layer_output(model, model, x)
    before = snapshot(model)
    with audit_mode(model):
        from auditor.nn.folding import foldable

        folds = foldable(model, model, x[:1])
        assert len(folds.norms) == 3
        assert [pad for _, pad in folds.pads] == [model[0].static_padding, model[3].static_padding,
                                                  model[6].static_padding]
        with folded_batch_norms(model, model, x[:1]) as count, Calls(torch.nn.functional.pad) as pads:
            output = layer_output(model, model, x)
            assert model[0].padding == (1, 1) and model[0].weight.shape[-2:] == (4, 4)  # a zero row above
            assert torch.equal(model[0].weight[..., 0, :], torch.zeros_like(model[0].weight[..., 0, :]))
            assert model[3].padding == (2, 2) and model[3].weight.shape[-2:] == (5, 5)  # even: the kernel as it was
    assert count == 3 and pads.count == 0
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    assert_unchanged(model, before)
    assert model[0].padding == (0, 0) and "forward" not in model[0].static_padding.__dict__


def test_folds_carried_to_a_copy_with_other_weights_fold_the_copy():
    """Folds found on a model, carried to a deep copy by name: the copy's own modules, none of the model's, and
    the copy, with every weight and statistic redrawn, computes what it computes unfolded."""
    import copy

    from auditor.nn.folding import foldable, folded

    model = same_padded_net()
    x = torch.randn(2, 3, 17, 17, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    other = randomise_statistics(copy.deepcopy(model), seed=1)
    with torch.no_grad():
        for param in other.parameters():
            param.normal_(generator=torch.Generator().manual_seed(param.numel()))
    expected = layer_output(other, other, x)
    with audit_mode(model), audit_mode(other):
        folds = foldable(model, model, x[:1])
        carried = folds.in_copy(model, other)
        own = {id(m) for m in other.modules()}
        assert (len(carried.norms), len(carried.pads), len(carried.rectifiers)) == (3, 3, 3)
        assert all(id(m) in own for pair in carried.norms + carried.pads for m in pair)
        assert all(id(m) in own for m in carried.rectifiers)
        with folded(carried) as count, Calls(torch.nn.functional.batch_norm) as norms, torch.no_grad():
            output = layer_output(other, other, x)
    assert count == 3 and norms.count == 0
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)


def test_a_padding_the_convolution_does_not_apply_to_its_input_is_not_folded():
    """Padding the output looks the same from the calls; the output check keeps every padding as it is (the
    BatchNorms, none after that padding, still fold)."""
    from auditor.nn.folding import foldable

    model = same_padded_net(after=True)
    x = torch.randn(1, 3, 17, 17, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with audit_mode(model):
        folds = foldable(model, model, x)
    assert len(folds.norms) == 2 and folds.pads == []


class ReusedRectifier(nn.Module):
    """One ReLU6 called after two convolutions, as EfficientNet-Lite0's blocks reuse theirs, and a ReLU that
    reads the model's input itself (the caller's tensor: never rectified in place)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.ReLU()
        self.conv1, self.norm, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.norm(self.conv1(self.first(x))))))


class ReadAgain(nn.Module):
    """The rectifier's input is read again after it: rectified in place, the sum would change."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.act(y) + y


def test_rectifiers_reading_fresh_outputs_work_in_place_where_no_graph_is_recorded():
    """In place: the output is the last convolution's own tensor, rectified, with the model's values; the
    input is untouched. With a graph, out of place and the model's gradient."""
    from auditor.nn.folding import foldable, folded

    torch.manual_seed(0)
    model = randomise_statistics(ReusedRectifier())
    model.conv2.weight.data.mul_(30)  # the second ReLU6 clamps at 6 too
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    given = x.clone()
    expected = model(x).detach()
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(leaf).square().sum(), leaf)
    before = snapshot(model)
    with audit_mode(model):
        folds = foldable(model, model, x[:1])
        assert folds.rectifiers == [model.act] and len(folds.norms) == 1
        with folded(folds):
            convolved: list[torch.Tensor] = []
            handle = model.conv2.register_forward_hook(lambda m, i, o: convolved.append(o))
            with torch.no_grad():
                output = model(x)
            leaf = x.clone().requires_grad_(True)
            with torch.enable_grad():
                graphed = model(leaf)
                (folded_gradient,) = torch.autograd.grad(graphed.square().sum(), leaf)
            handle.remove()
    assert output is convolved[0] and graphed is not convolved[1]  # rectified in place, then out of place
    assert torch.equal(x, given) and bool((expected == 6).any()) and bool((x < 0).any())
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(folded_gradient, gradient, rtol=1e-5, atol=1e-5 * float(gradient.abs().max()))
    assert_unchanged(model, before)


def test_a_rectifier_whose_input_is_read_again_is_not_made_in_place():
    """From the calls alone the rectifier reads a fresh output; the output check keeps it as it is."""
    from auditor.nn.folding import foldable

    torch.manual_seed(0)
    model = ReadAgain().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    assert fold_pairs(model, model, x)[0].rectifiers == [model.act]
    with audit_mode(model):
        assert foldable(model, model, x).rectifiers == []
        with folded_batch_norms(model, model, x), torch.no_grad():
            torch.testing.assert_close(model(x), model.act(model.conv(x)) + model.conv(x), rtol=0, atol=0)
