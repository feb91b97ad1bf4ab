"""Fold each eval-mode BatchNorm, and each zero padding, into the convolution beside it, for the duration
of a `with` block.

In eval mode a BatchNorm is a per-channel affine map, so a convolution followed by one is a single
convolution with scaled weights and a bias. A technique that runs the network up to a layer many times,
forward and backward (maximization: batch x steps), then skips every BatchNorm's forward and backward
pass: about a sixth of resnet50's time on the CPU (bench/bench_maximization.py).

A zero padding that a convolution applies to its own input (TensorFlow's "same" padding, as in
EfficientNet-PyTorch's Conv2dStaticSamePadding) copies the whole input into a larger zeroed tensor, slowly in
the channels-last layout. The convolution's own padding does the same without the copy: where the two sides
of an axis differ (stride 2: one more row below than above), it pads both by the larger amount and the kernel
grows by zero rows on the side padded less, so that each window covers the same pixels. The default model's
inference then runs about a quarter faster, to the same bits.

The user's tensors are never written: folded weights are new tensors and paddings new tuples, swapped in
and back out. A pair is folded only where one forward pass shows the BatchNorm reading exactly the
convolution's output (or the padding being the convolution's own, each called once), and the folded network
must reproduce the model's output on a random input, or that kind of fold is not made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auditor.nn.hooks import forward_hooks, forward_pre_hooks, truncated_forward
from auditor.nn.memory_format import outputs_agree

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_Pair = tuple[nn.Module, nn.Module]  # (convolution, the BatchNorm applied to its output, or its own padding)


@dataclass(frozen=True)
class Folds:
    """What `folded` folds: (convolution, BatchNorm) and (convolution, zero padding) pairs."""

    norms: list[_Pair] = field(default_factory=list)
    pads: list[_Pair] = field(default_factory=list)


@contextmanager
def folded_batch_norms(model: nn.Module, layer: nn.Module, example: torch.Tensor,
                       keep: Collection[nn.Module] = ()) -> Iterator[int]:
    """Within the block, `model` up to and including `layer` runs with its BatchNorms folded into the
    convolutions before them, and the zero paddings into the convolutions that apply them (`foldable`).
    Yields how many BatchNorms were folded: 0 when there is nothing to fold, or when the folded network's
    output for `example` differs from the model's (then the model runs as it is).
    `layer` may be the model itself: the whole forward pass.

    The modules in `keep`, and every module inside them, are not folded: a layer whose output is read
    (the CAM target layer's, captured by a hook set up inside the block) gives exactly the model's output
    there, not a folded convolution's output with its BatchNorm already applied.

    The model must be in eval mode (auditor.nn.restore.audit_mode): a BatchNorm in training mode is left alone.
    """
    with folded(foldable(model, layer, example, keep)) as count:
        yield count


def foldable(model: nn.Module, layer: nn.Module, example: torch.Tensor, keep: Collection[nn.Module] = ()) -> Folds:
    """The pairs of `conv_norm_pairs` if folding them all reproduces the model's output for `example` (else
    none), and those of `conv_pad_pairs` if folding them as well still does. Which module reads which tensor
    does not depend on the weights: found and checked once, the folds apply to the same model again after its
    weights change (`folded`), as at each step of the trust section's randomisation cascade."""
    norms, reference = conv_norm_pairs(model, layer, example, keep)
    if not isinstance(reference, torch.Tensor):
        return Folds()
    if norms:
        with _swapped(norms):
            norms = norms if outputs_agree(_output(model, layer, example), reference) else []
    pads = conv_pad_pairs(model, layer, example, keep)
    if pads:
        with _swapped(norms), _padded(pads):
            pads = pads if outputs_agree(_output(model, layer, example), reference) else []
    return Folds(norms, pads)


@contextmanager
def folded(folds: Folds) -> Iterator[int]:
    """Within the block, each BatchNorm of `folds` folded into its convolution (from their weights as they are
    now) and each padding into its convolution's own; yields how many BatchNorms were folded."""
    with _swapped(folds.norms), _padded(folds.pads):
        yield len(folds.norms)


def conv_norm_pairs(model: nn.Module, layer: nn.Module, example: torch.Tensor,
                    keep: Collection[nn.Module] = ()) -> tuple[list[_Pair], Any]:
    """The (convolution, BatchNorm) pairs that run before `layer`'s output on `example`, where the
    BatchNorm's input is the convolution's output tensor itself and each module runs once, and that
    output (the unfolded reference). Modules with hooks of their own, BatchNorms in training mode or
    without running statistics, `layer` itself (unless it is the model) and the modules in or inside
    `keep` are skipped."""
    if isinstance(model, torch.jit.ScriptModule):
        return [], None
    kept = {id(inner) for module in keep for inner in module.modules()}
    if layer is not model:
        kept.add(id(layer))
    convolutions = [m for m in model.modules() if isinstance(m, _CONVOLUTIONS) and _hookless(m) and id(m) not in kept]
    norms = [m for m in model.modules() if _foldable_norm(m) and id(m) not in kept]
    calls: Counter[nn.Module] = Counter()
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    found: list[_Pair] = []

    def after_convolution(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        calls[module] += 1
        outputs[id(output)] = (module, output)  # holding the tensor keeps its id from being reused

    def before_norm(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        calls[module] += 1
        convolution, output = outputs.get(id(inputs[0]) if inputs else -1, (None, None))
        if convolution is not None and output is inputs[0]:
            found.append((convolution, module))

    with forward_hooks([(m, after_convolution) for m in convolutions]), \
            forward_pre_hooks([(m, before_norm) for m in norms]), \
            truncated_forward(model, layer) as run, torch.no_grad():
        reference = run(example)
    pairs = [(conv, norm) for conv, norm in found
             if calls[conv] == 1 and calls[norm] == 1 and conv.out_channels == norm.num_features]
    return pairs, reference


def conv_pad_pairs(model: nn.Module, layer: nn.Module, example: torch.Tensor,
                   keep: Collection[nn.Module] = ()) -> list[_Pair]:
    """(2-d convolution, zero padding) pairs where the padding is a child of the convolution and each of the
    two runs once before `layer`'s output on `example`: the convolution pads its own input
    (EfficientNet-PyTorch's Conv2dStaticSamePadding), as `foldable`'s output check then confirms. A padding
    whose sides differ needs an undilated convolution (its kernel grows by zero rows). Modules with hooks, and
    those in or inside `keep`, are skipped."""
    if isinstance(model, torch.jit.ScriptModule):
        return []
    kept = {id(inner) for module in keep for inner in module.modules()}
    candidates = [(conv, pad) for conv in model.modules()
                  if isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
                  and id(conv) not in kept and _hookless(conv)
                  for pad in conv.children() if _zero_pad(pad, conv) and _hookless(pad)]
    if not candidates:
        return []
    calls: Counter[nn.Module] = Counter()

    def count(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        calls[module] += 1

    modules = {module for pair in candidates for module in pair}
    with forward_hooks([(m, count) for m in modules]), truncated_forward(model, layer) as run, torch.no_grad():
        run(example)
    return [(conv, pad) for conv, pad in candidates if calls[conv] == 1 and calls[pad] == 1]


def _zero_pad(module: nn.Module, conv: nn.Conv2d) -> bool:
    """A 2-d zero padding, not folded already, that `conv` can take on: no side negative (a crop), and equal
    sides unless the convolution is undilated."""
    if not isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d)) or module.value != 0 or "forward" in module.__dict__:
        return False
    left, right, top, bottom = module.padding
    return min(module.padding) >= 0 and ((left == right and top == bottom) or tuple(conv.dilation) == (1, 1))


def _foldable_norm(module: nn.Module) -> bool:
    """An eval-mode BatchNorm with statistics and no hooks, not folded already: a fold inside another
    (Score-CAM's masked passes inside the trust section's folded copy) leaves the outer one's pairs alone."""
    return (isinstance(module, _BATCH_NORMS) and not module.training and module.running_mean is not None
            and module.running_var is not None and _hookless(module) and "forward" not in module.__dict__)


def _hookless(module: nn.Module) -> bool:
    """No hooks of the module's own, which folding would skip (a BatchNorm) or feed other values (a convolution)."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def _folded(conv: nn.Module, norm: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    """The weight and bias of conv followed by norm, computed in float64 and stored in conv's dtype."""
    scale = (norm.running_var.double() + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale
    if norm.bias is not None:
        shift = shift + norm.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    weight = conv.weight.double() * scale.view(-1, *[1] * (conv.weight.ndim - 1))
    dtype = conv.weight.dtype
    return (nn.Parameter(weight.to(dtype), requires_grad=False), nn.Parameter(shift.to(dtype), requires_grad=False))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@contextmanager
def _swapped(pairs: list[_Pair]) -> Iterator[None]:
    """Folded weights in each convolution and each BatchNorm passing its input through, then the originals back."""
    saved: list[tuple[nn.Module, nn.Parameter, nn.Parameter | None, nn.Module]] = []
    try:
        for conv, norm in pairs:
            weight, bias = _folded(conv, norm)
            saved.append((conv, conv.weight, conv.bias, norm))
            conv.weight, conv.bias = weight, bias
            norm.forward = _identity
        yield
    finally:
        for conv, weight, bias, norm in reversed(saved):
            conv.weight, conv.bias = weight, bias
            norm.__dict__.pop("forward", None)


@contextmanager
def _padded(pairs: list[_Pair]) -> Iterator[None]:
    """Each padding passing its input through and its convolution padding each axis by the larger of its two
    sides, the kernel grown by zeros on the side padded less (windows then start where the padded input's
    did, and as many fit); then the originals back."""
    saved: list[tuple[nn.Module, Any, nn.Parameter, nn.Module]] = []
    try:
        for conv, pad in pairs:
            left, right, top, bottom = pad.padding
            rows, columns = max(top, bottom), max(left, right)
            saved.append((conv, conv.padding, conv.weight, pad))
            if (left, top) != (right, bottom):
                grown = F.pad(conv.weight.detach(), (columns - left, columns - right, rows - top, rows - bottom))
                conv.weight = nn.Parameter(grown, requires_grad=False)
            conv.padding = (conv.padding[0] + rows, conv.padding[1] + columns)
            pad.forward = _identity
        yield
    finally:
        for conv, padding, weight, pad in reversed(saved):
            conv.padding, conv.weight = padding, weight
            pad.__dict__.pop("forward", None)


def _output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> Any:
    with truncated_forward(model, layer) as run, torch.no_grad():
        return run(x)
