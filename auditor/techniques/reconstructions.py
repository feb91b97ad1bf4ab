"""Deconvnet and guided backprop: input gradients with a modified backward pass through rectifiers.

Guided backprop (Springenberg et al. 2015) passes a gradient back through a rectifier only where both
the forward input and the gradient are positive; deconvnet (Zeiler & Fergus 2014) passes back
relu(gradient) whatever the forward input was. Max-unpooling and transposed filters are what autograd
already does through max pooling and convolution, so only the rectifiers change.

The rectifiers are replaced while the forward pass runs by a TorchFunctionMode, not by module hooks,
so in-place ReLUs, modules called several times in one pass and functional calls (F.relu, torch.relu,
Tensor.relu, their in-place forms) are all covered, and the model itself is never modified. ReLU6
and hardtanh(min 0) count as rectifiers: guided backprop passes the gradient where 0 < x < max and
it is positive. Other activations (Hardswish, SiLU, GELU, leaky ReLU) keep their plain gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from auditor.errors import AuditorError
from auditor.nn.hooks import has_torchscript, truncated_forward
from auditor.nn.layers import channels_first, resolve_layer
from auditor.nn.restore import audit_mode
from auditor.techniques.tensor_ops import minmax


class RectifierNotSeenWarning(UserWarning):
    """Guided backprop or deconvnet could not see the model's rectifiers, so its result is (partly) the
    plain input gradient. The message says why; the report should show it."""


class NoRectifierWarning(RectifierNotSeenWarning):
    """No rectifier was seen at all: the result is wholly the plain input gradient, not the method's."""


@dataclass
class RectifierWarnings:
    """The RectifierNotSeenWarnings raised inside a `rectifier_warnings()` block, filled in when it ends."""

    messages: list[str] = field(default_factory=list)  # every one, each once, in the order raised: for a note
    plain: list[str] = field(default_factory=list)  # the NoRectifierWarnings among them: results that ARE
    # the plain gradient. The one rule for that: a partly TorchScript model only warns (its other
    # rectifiers are still replaced), so its results keep their method's name.


@contextmanager
def rectifier_warnings() -> Iterator[RectifierWarnings]:
    """Record, instead of showing, the RectifierNotSeenWarnings of guided backprop and deconvnet run inside
    the block, every time they are raised; any other warning is shown (or recorded) as it would be without it.

        with rectifier_warnings() as seen:
            gradients = guided_backprop(model, x, targets)
        if seen.plain: ...  # no rectifier was seen: `gradients` is the plain input gradient
    """
    seen = RectifierWarnings()
    with warnings.catch_warnings():  # restores the filters and showwarning however the block ends
        warnings.simplefilter("always", RectifierNotSeenWarning)
        show = warnings.showwarning

        def record(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: Any = None, line: str | None = None) -> None:
            if not issubclass(category, RectifierNotSeenWarning):
                show(message, category, filename, lineno, file, line)
                return
            if str(message) not in seen.messages:
                seen.messages.append(str(message))
            if issubclass(category, NoRectifierWarning) and str(message) not in seen.plain:
                seen.plain.append(str(message))

        warnings.showwarning = record
        yield seen


RULES = ("guided-backprop", "deconvnet", "gradient")  # the backward rules, named as in auditor.methods
_WORDS = {"guided-backprop": "guided backprop", "deconvnet": "deconvnet"}  # in warnings


def guided_backprop(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | Sequence[int],
                    layer: str | nn.Module | None = None) -> torch.Tensor:
    """Guided backprop input gradients [N, 3, H, W] (see module doc and `gradient` for the arguments)."""
    return input_gradients(model, x, targets, ("guided-backprop",), layer)["guided-backprop"]


def deconvnet(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | Sequence[int],
              layer: str | nn.Module | None = None) -> torch.Tensor:
    """Deconvnet reconstructions [N, 3, H, W] (see module doc and `gradient` for the arguments)."""
    return input_gradients(model, x, targets, ("deconvnet",), layer)["deconvnet"]


def gradient(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | Sequence[int],
             layer: str | nn.Module | None = None) -> torch.Tensor:
    """The plain input gradient [N, 3, H, W] of each image's objective, in eval mode, batched over images.

    Without `layer`, targets [N] are class indices and the objective is that logit ([N, K]: K classes per
    image, the gradients [N, K, 3, H, W], from one forward pass as in `input_gradients`). With `layer`,
    targets are channel indices of that layer's output and the objective is the channel's strongest
    activation (Zeiler & Fergus: keep the maximum of the feature map, zero the rest, project back;
    the seed is 1 at the maximum, so results are not scaled by the activation value; channels-last
    maps and patch tokens are read channels first). The forward pass stops at the layer's first call.
    The result is detached, on x's device.
    """
    return input_gradients(model, x, targets, ("gradient",), layer)["gradient"]


def input_gradients(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | Sequence[int],
                    methods: Sequence[str] = RULES, layer: str | nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Several methods' input gradients from one forward pass: per method of `methods` (of RULES), the
    gradients [N, 3, H, W] for targets [N], or [N, K, 3, H, W] for targets [N, K] (K objectives per image).

    The forward pass records each rectifier once (`RuleGraph`), keeping its mask 0 < x < max; each backward
    pass then applies one method's rule to it, so guided backprop, deconvnet and the plain gradient of K
    targets cost one forward pass and K backward passes each, the numbers of their one-method calls. The
    plain gradient alone runs no mode at all: autograd's own backward."""
    with audit_mode(model), torch.inference_mode(False), torch.enable_grad():
        # clones made here are normal tensors even when the caller's are from inference mode
        graph = RuleGraph(x, methods)
        targets = torch.as_tensor(targets, dtype=torch.long, device=x.device).clone()
        if targets.ndim not in (1, 2) or targets.shape[0] != x.shape[0]:
            raise AuditorError(f"targets: give one index per image ({x.shape[0]}), or [images, K], not a tensor "
                               f"of shape {tuple(targets.shape)}")
        columns = targets[:, None] if targets.ndim == 1 else targets
        with graph.recording():
            output = _forward(model, graph.input, layer)
        if layer is not None and isinstance(output, torch.Tensor):  # Swin's channels-last maps, ViT's tokens
            output = channels_first(output, (x.shape[-2], x.shape[-1]))
        found = graph.per_target(output, columns, layer)
    graph.warn_if_blind(model)
    return {m: g if targets.ndim == 2 else g[:, 0] for m, g in found.items()}


class RuleGraph:
    """One forward pass recorded for the input gradients of several backward rules (of RULES): run the model
    on `input` inside `recording()`, then `per_target` gives each rule's gradients, a backward pass per rule
    and target. Any other backward pass of the same graph (the CAM family's, to its layer) is autograd's own."""

    def __init__(self, x: torch.Tensor, methods: Sequence[str]) -> None:
        unknown = [m for m in methods if m not in RULES]
        if unknown or not methods:
            raise ValueError(f"input_gradients: methods among {', '.join(RULES)}, not {', '.join(unknown) or 'none'}")
        self.methods = tuple(methods)
        self.rule = None if self.methods == ("gradient",) else _Rule()
        self.leaf = x.detach().clone().requires_grad_(True)
        self.input = self.leaf.clone()  # a non-leaf copy: in-place ops on it are allowed

    def recording(self) -> AbstractContextManager[Any]:
        """Where the forward pass runs: rectifiers recorded, when a rule other than the plain gradient is asked."""
        return self.rule if self.rule is not None else nullcontext()

    def per_target(self, output: Any, columns: torch.Tensor, layer: str | nn.Module | None = None,
                   keep: bool = False) -> dict[str, torch.Tensor]:
        """Per rule, the input gradients [N, K, 3, H, W] of each column k's objective (`_objective`: the target
        logit, or with `layer` the channel's strongest activation). The graph is freed after the last
        backward pass unless `keep` (another backward pass of it follows)."""
        objectives = [_objective(output, columns[:, k], layer) for k in range(columns.shape[1])]
        found: dict[str, list[torch.Tensor]] = {m: [] for m in self.methods}
        last = (len(objectives) - 1, len(self.methods) - 1)
        for k, objective in enumerate(objectives):
            for i, method in enumerate(self.methods):
                if self.rule is not None:
                    self.rule.method = method
                (grad,) = torch.autograd.grad(objective, self.leaf, retain_graph=keep or (k, i) != last)
                found[method].append(grad.detach())
        if self.rule is not None:
            self.rule.method = "gradient"
        return {m: torch.stack(g, dim=1) for m, g in found.items()}

    def warn_if_blind(self, model: nn.Module) -> None:
        """Warn, per rectified method, when the rectifiers could not all be replaced (`_warn_if_blind`)."""
        if self.rule is not None:
            for method in self.methods:
                if method != "gradient":
                    _warn_if_blind(model, self.rule, _WORDS[method])


class _Rule(TorchFunctionMode):
    """While active, every rectifier call runs as _Rectify; `seen` counts them. `method` (one of RULES) is
    the backward rule, read when the backward pass runs, so one recorded forward serves every method."""

    def __init__(self) -> None:
        super().__init__()
        self.method = "gradient"
        self.seen = 0

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        call = _rectifier_call(func, args, kwargs)
        if call is None:
            return func(*args, **kwargs)
        self.seen += 1
        x, upper, inplace = call
        return _Rectify.apply(x, upper, self, inplace)


class _Rectify(torch.autograd.Function):
    """clamp(x, 0, upper), in place or not. Backward, by the rule's method: guided backprop passes
    relu(gradient) where 0 < x < upper, deconvnet relu(gradient) everywhere, the plain gradient the gradient
    where 0 < x < upper (autograd's own ReLU and hardtanh backward). It saves what autograd's own rectifiers
    save: x, or the output when x is overwritten in place (both are in (0, upper) at the same places); the
    backward is then one fused kernel, with no mask to build or convert."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, upper: float | None, rule: _Rule, inplace: bool) -> torch.Tensor:
        ctx.rule, ctx.upper = rule, upper
        if not inplace:
            ctx.save_for_backward(x)
            return torch.relu(x) if upper is None else x.clamp(0, upper)
        ctx.mark_dirty(x)
        output = x.relu_() if upper is None else x.clamp_(0, upper)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (saved,) = ctx.saved_tensors
        method = ctx.rule.method
        if method == "deconvnet":
            return grad.clamp(min=0), None, None, None
        passed = (torch.ops.aten.threshold_backward(grad, saved, 0) if ctx.upper is None
                  else torch.ops.aten.hardtanh_backward(grad, saved, 0, ctx.upper))
        return (passed if method == "gradient" else passed.clamp_(min=0)), None, None, None  # its own tensor


def _rectifier_call(func: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> tuple[torch.Tensor, float | None, bool] | None:
    """(input, upper limit or None, in place) when `func(*args, **kwargs)` is a rectifier, else None."""
    if func in (torch.relu, torch.Tensor.relu):
        return args[0], None, False
    if func in (torch.relu_, torch.Tensor.relu_):
        return args[0], None, True
    if func is F.relu:
        (x, inplace) = _bind(args, kwargs, {"input": None, "inplace": False})
        return x, None, inplace
    if func is F.relu6:
        (x, inplace) = _bind(args, kwargs, {"input": None, "inplace": False})
        return x, 6.0, inplace
    if func is F.hardtanh:
        (x, low, high, inplace) = _bind(args, kwargs, {"input": None, "min_val": -1.0, "max_val": 1.0,
                                                       "inplace": False})
        return (x, float(high), inplace) if low == 0 else None
    return None


def _bind(args: tuple[Any, ...], kwargs: dict[str, Any], defaults: dict[str, Any]) -> list[Any]:
    """Positional and keyword arguments as a list in the order of `defaults` (name -> default)."""
    return [args[i] if i < len(args) else kwargs.get(name, default)
            for i, (name, default) in enumerate(defaults.items())]


def _forward(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None) -> Any:
    """The logits, or the output of `layer`'s first call (the forward pass stops there)."""
    if layer is None:
        return model(x)
    _, module = resolve_layer(model, layer)
    with truncated_forward(model, module) as run:
        return run(x)


def _objective(output: Any, targets: torch.Tensor, layer: str | nn.Module | None) -> torch.Tensor:
    """Sum over images of each image's target logit, or of its target channel's maximum activation."""
    what, whats = ("class", "classes") if layer is None else ("channel", "channels")
    if not isinstance(output, torch.Tensor) or output.ndim < 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        if layer is None:
            raise AuditorError(f"--model: the model outputs {shape}, not class scores (batch, classes)")
        name = layer if isinstance(layer, str) else type(layer).__name__
        raise AuditorError(f"--layer: {name!r} outputs {shape}, not (batch, channels, ...); choose another layer")
    count = output.shape[1]
    bad = targets[(targets < 0) | (targets >= count)]
    if bad.numel():
        raise AuditorError(f"targets: {what} {int(bad[0])} is out of range; the output has {count} {whats} "
                           f"(0 to {count - 1})")
    chosen = output[torch.arange(len(targets), device=output.device), targets]
    return chosen.reshape(len(targets), -1).max(dim=1).values.sum()


def _warn_if_blind(model: nn.Module, rule: _Rule, method: str) -> None:
    """Warn (never silently) when the rectifiers could not all be replaced: the result is then the plain gradient."""
    if rule.seen == 0:
        warnings.warn(f"{method}: no rectifier (nn.ReLU, ReLU6, F.relu, torch.relu) ran in the forward pass, "
                      "e.g. a TorchScript model or one with other activations; the result reduces to the plain "
                      "input gradient", NoRectifierWarning, stacklevel=5)
    elif has_torchscript(model):
        warnings.warn(f"{method}: part of the model is TorchScript, whose functional ReLUs cannot be replaced; "
                      "there the result is the plain input gradient", RectifierNotSeenWarning, stacklevel=5)


def gradient_saliency(gradients: torch.Tensor) -> torch.Tensor:
    """Input gradients [..., C, H, W] -> maps [..., H, W] in [0, 1]: largest |gradient| over channels, min-max scaled.

    The usual reduction (Simonyan et al. 2014), so guided backprop, deconvnet and the plain gradient
    compare with the CAM maps on one footing: absolute values, as Adebayo et al. compare them. A
    constant map becomes all zeros.
    """
    return minmax(gradients.abs().amax(dim=-3))


