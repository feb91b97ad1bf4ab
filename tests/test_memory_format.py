"""The input layout AuditContext chooses: channels-last on the CPU only where the model computes the same
output with it; a model that fails or silently differs on it, or has no convolution, keeps the usual layout."""

from __future__ import annotations

import torch
from torch import nn

from auditor import RunOptions, load_images, load_model
from auditor.context import AuditContext
from tests.fixtures_models import tiny


class FlatView(nn.Module):
    """Views a convolution's map as flat memory with .view(): fails on a channels-last map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.view(len(y), -1)[:, :5]


class MemoryOrder(nn.Module):
    """Reads a map in memory order through numpy: the same values in another order on channels-last, no error."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).detach()
        flat = torch.from_numpy(y.numpy().ravel(order="K").copy())
        return flat.view(len(y), -1)[:, :5]


class ColourOnly(nn.Module):
    """No convolution: the layout cannot matter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def context(module: nn.Module) -> AuditContext:
    model = load_model(module, input_size=32)
    return AuditContext(model, load_images(None, model.preprocess), RunOptions(device="cpu"), torch.device("cpu"), {})


def test_a_convolutional_model_gets_channels_last_inputs_and_the_same_logits():
    module = tiny()
    ctx = context(module)
    assert ctx.memory_format == torch.channels_last
    x = ctx.inputs([0, 1])
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    with torch.inference_mode():
        expected = module(x.contiguous())
    torch.testing.assert_close(ctx.forward.logits[:2], expected, rtol=1e-5, atol=1e-6)


def test_models_that_fail_differ_or_have_no_convolution_keep_the_usual_layout():
    for module in (FlatView(), MemoryOrder(), ColourOnly()):
        ctx = context(module.eval())
        assert ctx.memory_format == torch.contiguous_format, type(module).__name__
        assert ctx.inputs([0]).is_contiguous()
        assert ctx.forward.logits.shape[1] in (3, 5)  # the shared forward pass runs as before
