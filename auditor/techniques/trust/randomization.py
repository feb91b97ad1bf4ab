"""How far to trust a saliency map: the model-randomisation sanity check (Adebayo et al. 2018).

They randomise a trained model's weights from the head downwards and compare each method's maps
before and after (auditor.techniques.trust.similarity): a map that barely changes does not depend on
what the model learnt. This module holds the cascade of randomised copies, the random other class for
the random-logit check, and the verdict. Faithfulness (deletion / insertion, average drop) is in
trust.perturbation, localisation against boxes in trust.boxes.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from auditor.errors import AuditorError
from auditor.nn.hooks import forward_pre_hooks
from auditor.nn.restore import audit_mode

__all__ = ["SANITY_THRESHOLD", "cascade_ends", "parametrised_layers", "random_other_class",
           "randomization_cascade", "sanity_verdict"]

Verdict = Literal["pass", "warn"]

# A method passes when its maps' rank correlation with the trained model's (absolute maps, mean over
# images), averaged over the cascade's steps, is below this. Averaged over the steps, not read at the
# last one: Adebayo et al.'s finding is that guided backprop barely changes while layer after layer
# is randomised, and on the default model (bench/bench_trust.py, 6 steps, bundled photos at 224 px)
# it keeps 1.00 0.97 0.90 0.76 0.47 and only falls to 0.38 once the stem is random too, so the last
# step alone would pass it. Means there: guided backprop 0.75, plain gradient 0.31, Grad-CAM 0.03.
# 0.5 is where half of the map's rank order survives the loss of what the model learnt, on average
# over the cascade: above it the map is mostly a picture of the input, not of the model.
SANITY_THRESHOLD = 0.5


def parametrised_layers(model: nn.Module, example: torch.Tensor | None = None) -> list[str]:
    """Names of the modules that hold parameters themselves, input end first.

    With an example input the order is that of the forward pass (each module's first call, seen by
    a pre-hook), which is what "from the head downwards" means; a module whose own forward never runs
    (nn.MultiheadAttention's out_proj is used through its weights) takes its nearest called
    ancestor's place. Without one, module registration order stands in for it.
    """
    owners = [name for name, module in model.named_modules()
              if next(module.parameters(recurse=False), None) is not None]
    if example is None:
        return owners
    first_call = _first_calls(model, example)
    registration = {name: index for index, name in enumerate(owners)}
    return sorted(owners, key=lambda name: (_called_ancestor_position(name, first_call), registration[name]))


def _first_calls(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Position of each module's first call in one forward pass (eval mode, no gradients)."""
    calls: dict[str, int] = {}

    def recorder(name: str) -> Any:
        def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
            calls.setdefault(name, len(calls))
        return hook

    device = next(model.parameters()).device
    with forward_pre_hooks([(module, recorder(name)) for name, module in model.named_modules()]), \
            audit_mode(model), torch.inference_mode():
        model(example.to(device))
    return calls


def _called_ancestor_position(name: str, first_call: dict[str, int]) -> int:
    """First-call position of the module, or of its nearest ancestor that was called (the root always is)."""
    parts = name.split(".") if name else []
    for depth in range(len(parts), -1, -1):
        position = first_call.get(".".join(parts[:depth]))
        if position is not None:
            return position
    return -1  # a root that was never called: cannot happen after a forward pass


def cascade_ends(count: int, steps: int) -> list[int]:
    """How many layers (from the head) are random after each step: first the head alone, last all `count`.

    The layers below the head are split into steps - 1 nearly equal groups; `steps` is capped at
    `count`. One step randomises everything at once.
    """
    steps = min(steps, count)
    if steps == 1:
        return [count]
    # round-half-up in integers: strictly increasing because each group has at least one layer
    return [1 + (2 * (count - 1) * k + steps - 1) // (2 * (steps - 1)) for k in range(steps)]


def randomization_cascade(model: nn.Module, steps: int, seed: int = 0, *,
                          example: torch.Tensor | None = None) -> Iterator[tuple[str, nn.Module]]:
    """Yield (label, randomised copy) for each cumulative step, from the head downwards (Adebayo et al. 2018).

    Works on one deep copy, never on `model`: every step re-initialises the next group of
    parametrised layers (`parametrised_layers` order, reversed) in that same copy, so use it before
    asking for the next step. The label is the lowest layer randomised so far. Each layer is reset by
    its own reset_parameters() (batch norm: weight 1, bias 0 and running statistics 0 / 1, i.e. the
    learnt normalisation is gone too; nn.MultiheadAttention: its _reset_parameters(); a module with
    neither: each own parameter redrawn from a normal with that tensor's mean and standard deviation),
    under a seed made from `seed` and the layer's name inside torch.random.fork_rng: the same seed
    gives the same weights whatever `steps` is, and the global RNG is left as it was.
    """
    if steps < 1:
        raise AuditorError(f"--trust-steps: {steps} is not a number of randomisation steps; use 1 or more")
    randomised = copy.deepcopy(model)
    names = parametrised_layers(randomised, example)[::-1]
    if not names:
        raise AuditorError("randomisation test: the model has no parameters to randomise")
    modules = dict(randomised.named_modules())
    done = 0
    for end in cascade_ends(len(names), steps):
        for name in names[done:end]:
            _reinitialise(modules[name], name, seed)
        done = end
        yield names[end - 1] or "(root)", randomised


def _reinitialise(module: nn.Module, name: str, seed: int) -> None:
    """Reset one module's own parameters reproducibly, without touching the global RNG state."""
    devices = sorted({p.device.index or 0 for p in module.parameters(recurse=False) if p.device.type == "cuda"})
    elsewhere = any(p.device.type not in ("cpu", "cuda") for p in module.parameters(recurse=False))
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        layer_seed = zlib.crc32(f"{seed}:{name}".encode())
        if elsewhere:  # another accelerator's parameters: every generator, as torch.manual_seed seeds them
            torch.manual_seed(layer_seed)
        else:  # only the generators the parameters draw from: torch.manual_seed formats a stack trace for each
            # accelerator not started yet, to report a failed lazy seeding (0.1 s over the default cascade)
            torch.random.default_generator.manual_seed(layer_seed)
            for device in devices:
                torch.cuda.default_generators[device].manual_seed(layer_seed)
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if reset is not None:
            reset()
            return
        for param in module.parameters(recurse=False):
            param.normal_(param.mean().item(), param.std(correction=0).item())


def random_other_class(top: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """For the random-logit check: per image, a class drawn uniformly from all classes except its top class.

    Seeded with its own generator (the global RNG is untouched); same device and shape as `top`.
    """
    if num_classes < 2:
        raise AuditorError(f"random-logit check: the model has {num_classes} output; it needs 2 classes or more")
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randint(num_classes - 1, tuple(top.shape), generator=generator)
    cpu_top = top.cpu().long()
    return (draw + (draw >= cpu_top).long()).to(top.device)


def sanity_verdict(curve: torch.Tensor | Sequence[float], threshold: float = SANITY_THRESHOLD) -> Verdict:
    """"pass" when the similarity averaged over the cascade's steps is below `threshold`, else "warn".

    `curve` is the Spearman correlation of absolute maps per step, [steps] or [steps, images] (then
    averaged over images too). See SANITY_THRESHOLD for why the mean over the steps and why 0.5; with
    one step it is the fully randomised model's value. Steps that were not computed (a method scored at
    a subset of the cascade's steps) are NaN and left out of the mean; a curve with none computed warns.
    """
    values = torch.as_tensor(curve, dtype=torch.float64)
    computed = values[~values.isnan()]
    return "pass" if computed.numel() and float(computed.mean()) < threshold else "warn"
