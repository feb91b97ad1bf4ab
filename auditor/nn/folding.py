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

A rectifier (ReLU, ReLU6, hardtanh) that reads only convolutions' and BatchNorms' outputs rectifies them in
place while no gradient is recorded (deletion and insertion's hundreds of perturbed images). Out of place, a
clamp writes a new tensor to memory the caches have lost: the default model's clamps are a quarter of its
inference, and in place its inference runs about a tenth faster. With a graph, the rectifier runs as the
model's own, since autograd may need its input.

The user's tensors are never written: folded weights are new tensors and paddings new tuples, swapped in
and back out. A pair is folded only where one forward pass shows the BatchNorm reading exactly the
convolution's output (or the padding being the convolution's own, each called once, or the rectifier reading
a fresh output), and the folded network must reproduce the model's output on the example, or that kind of
fold is not made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auditor.nn.hooks import forward_hooks, forward_pre_hooks, truncated_forward
from auditor.nn.memory_format import outputs_agree

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_RECTIFIERS = (nn.ReLU, nn.Hardtanh)  # ReLU6 is a Hardtanh; in place, autograd saves their output, not input
_Pair = tuple[nn.Module, nn.Module]  # (convolution, the BatchNorm applied to its output, or its own padding)


@dataclass(frozen=True)
class Folds:
    """What `folded` folds: (convolution, BatchNorm) and (convolution, zero padding) pairs, and the rectifiers
    that may work in place."""

    norms: list[_Pair] = field(default_factory=list)
    pads: list[_Pair] = field(default_factory=list)
    rectifiers: list[nn.Module] = field(default_factory=list)

    def in_copy(self, model: nn.Module, copy: nn.Module) -> Folds:
        """The same folds in `copy`, a deep copy of `model` (its modules matched by qualified name). Which
        module reads which tensor does not depend on the weights, so the folds found and checked on `model`
        hold for a copy whose weights differ, as the trust section's randomised one: no second search."""
        names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
        modules = dict(copy.named_modules(remove_duplicate=False))

        def same(module: nn.Module) -> nn.Module:
            return modules[names[id(module)]]

        return Folds([(same(a), same(b)) for a, b in self.norms], [(same(a), same(b)) for a, b in self.pads],
                     [same(m) for m in self.rectifiers])


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
    """The folds of `fold_pairs` if making them all reproduces the model's output for `example`; when it does
    not, the BatchNorms if they alone do, then the paddings and the rectifiers if each still does. Which module
    reads which tensor does not depend on the weights: found and checked once, the folds apply to the same
    model again after its weights change (`folded`), as at each step of the trust section's randomisation
    cascade."""
    pairs, reference = fold_pairs(model, layer, example, keep)
    if not isinstance(reference, torch.Tensor):
        return Folds()
    kinds = [kind.name for kind in fields(Folds)]
    if not any(getattr(pairs, kind) for kind in kinds) or _agrees(model, layer, example, reference, pairs):
        return pairs
    chosen = Folds()  # some fold changes the output: each kind in turn, kept if it does not
    for kind in kinds:
        trial = replace(chosen, **{kind: getattr(pairs, kind)})
        if getattr(pairs, kind) and _agrees(model, layer, example, reference, trial):
            chosen = trial
    return chosen


@contextmanager
def folded(folds: Folds) -> Iterator[int]:
    """Within the block, each BatchNorm of `folds` folded into its convolution (from their weights as they are
    now), each padding into its convolution's own, and each rectifier in place where no graph is recorded;
    yields how many BatchNorms were folded."""
    with _swapped(folds.norms), _padded(folds.pads), _in_place(folds.rectifiers):
        yield len(folds.norms)


def fold_pairs(model: nn.Module, layer: nn.Module, example: torch.Tensor,
               keep: Collection[nn.Module] = ()) -> tuple[Folds, Any]:
    """The pairs that one forward pass of `example` up to `layer`'s output shows foldable, and that output (the
    unfolded reference):
    - (convolution, BatchNorm) where the BatchNorm's input is the convolution's output tensor itself;
    - (2-d convolution, zero padding) where the padding is a child of the convolution (it pads its own input,
      as EfficientNet-PyTorch's Conv2dStaticSamePadding does; `foldable`'s output check confirms it). A
      padding whose sides differ needs an undilated convolution (its kernel grows by zero rows).
    Each module of a pair runs once. And the ReLU, ReLU6 and hardtanh modules (not in place already) whose every
    call reads a convolution's or a BatchNorm's output: a fresh tensor, which `foldable`'s output check confirms
    nothing else reads. Modules with hooks of their own, BatchNorms in training mode or without running
    statistics, `layer` itself (unless it is the model) and the modules in or inside `keep` are skipped."""
    if isinstance(model, torch.jit.ScriptModule):
        return Folds(), None
    kept = {id(inner) for module in keep for inner in module.modules()}
    if layer is not model:
        kept.add(id(layer))
    convolutions = [m for m in model.modules() if isinstance(m, _CONVOLUTIONS) and _hookless(m) and id(m) not in kept]
    norms = [m for m in model.modules() if _foldable_norm(m) and id(m) not in kept]
    pads = [(conv, pad) for conv in convolutions
            if isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            for pad in conv.children() if _zero_pad(pad, conv) and _hookless(pad)]
    rectifiers = [m for m in model.modules() if isinstance(m, _RECTIFIERS) and not m.inplace and _hookless(m)
                  and id(m) not in kept and "forward" not in m.__dict__]
    calls: Counter[nn.Module] = Counter()
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the convolutions' and BatchNorms', by id
    reads_fresh: dict[nn.Module, bool] = {}
    found: list[_Pair] = []

    def after(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        calls[module] += isinstance(module, _CONVOLUTIONS)  # a BatchNorm is counted before it runs
        outputs[id(output)] = (module, output)  # holding the tensor keeps its id from being reused

    def producer(inputs: tuple[Any, ...]) -> nn.Module | None:
        """The convolution or BatchNorm whose output is the first input itself, if any."""
        module, output = outputs.get(id(inputs[0]) if inputs else -1, (None, None))
        return module if output is not None and output is inputs[0] else None

    def before_rectifier(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        calls[module] += 1
        reads_fresh[module] = reads_fresh.get(module, True) and producer(inputs) is not None

    def before_norm(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        calls[module] += 1
        convolution = producer(inputs)
        if isinstance(convolution, _CONVOLUTIONS):
            found.append((convolution, module))

    def count(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        calls[module] += 1

    with forward_hooks([(m, after) for m in convolutions + norms] + [(pad, count) for _, pad in pads]), \
            forward_pre_hooks([(m, before_norm) for m in norms] + [(m, before_rectifier) for m in rectifiers]), \
            truncated_forward(model, layer) as run, torch.no_grad():
        reference = run(example)
    once = [(conv, norm) for conv, norm in found
            if calls[conv] == 1 and calls[norm] == 1 and conv.out_channels == norm.num_features]
    return Folds(once, [(conv, pad) for conv, pad in pads if calls[conv] == 1 and calls[pad] == 1],
                 [m for m in rectifiers if reads_fresh.get(m)]), reference


def _agrees(model: nn.Module, layer: nn.Module, example: torch.Tensor, reference: torch.Tensor, folds: Folds) -> bool:
    """Whether the network with `folds` folded gives `reference` for `example` (`outputs_agree`)."""
    with folded(folds):
        return outputs_agree(_output(model, layer, example), reference)


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


@contextmanager
def _in_place(rectifiers: list[nn.Module]) -> Iterator[None]:
    """Each rectifier working in place on an input that no graph records, then as it was."""
    try:
        for module in rectifiers:
            module.forward = _rectifying_in_place(module)
        yield
    finally:
        for module in rectifiers:
            module.__dict__.pop("forward", None)


def _rectifying_in_place(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The rectifier's forward, in place unless its input requires grad (then out of place, as it runs itself)."""
    if isinstance(module, nn.ReLU):
        return lambda x: F.relu(x, inplace=not x.requires_grad)
    return lambda x: F.hardtanh(x, module.min_val, module.max_val, inplace=not x.requires_grad)


def _output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> Any:
    with truncated_forward(model, layer) as run, torch.no_grad():
        return run(x)
