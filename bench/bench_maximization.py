"""Time activation maximisation per channel against the tutorial loop and torch-lucent's render_vis.

Run: .venv/bin/python bench/bench_maximization.py [--steps 64] [--size 128] [--tutorial-channels 4] [--threads 1]
     [--wall]

Times are CPU seconds of this process (time.process_time) with --threads torch threads: on a shared
machine wall time measures the neighbours, CPU time with one thread measures the work.

Cases (resnet50, random weights: timing does not depend on them):
  layer3, 16 channels (0, 64, ..., 960) and the tutorial's own layer1.2.conv3, channels 0, 10, ..., 150.
Rows:
  tutorial   one channel at a time through the whole model, Adam(lr 0.1, weight decay 1e-6) on pixels,
             loss.backward() as the tutorial writes it (its parameters require grad); timed on
             --tutorial-channels channels and reported per channel
  lucent     render_vis: one batch of all channels, Fourier image, standard transforms,
             fixed_image_size; needs `pip install torch-lucent --no-deps` plus decorator and kornia==0.4.1
             (IPython, imported only to show images in notebooks, is stubbed here)
  pixel      auditor's maximize(method="pixel"): one batch, truncated forward, BatchNorms folded into the
             convolutions, frozen parameters, channels-last input
  fourier    auditor's maximize(method="fourier")
Finally the report's default: EfficientNet-Lite0, default layer and 8 channels, both methods.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from auditor.inputs.models import load_model
from auditor.inputs.preprocess import IMAGENET_MEAN, IMAGENET_STD
from auditor.techniques import maximization as mx

CASES = {"layer3": list(range(0, 1024, 64)), "layer1.2.conv3": list(range(0, 160, 10))}


CLOCK = time.process_time  # --wall: time.perf_counter


def seconds(function: Callable[[], object]) -> float:
    """CPU seconds the call took (all threads of this process), or wall seconds with --wall."""
    start = CLOCK()
    function()
    return CLOCK() - start


def tutorial(model: nn.Module, layer: str, channel: int, size: int, steps: int) -> None:
    """The classic tutorial's loop for one channel: whole model, hook on the layer, Adam on pixels."""
    captured = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.update(out=o))
    try:
        image = ((torch.rand(1, 3, size, size) * 30 + 150) / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        image = (image / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)).requires_grad_(True)
        optimizer = torch.optim.Adam([image], lr=0.1, weight_decay=1e-6)
        for _ in range(steps):
            optimizer.zero_grad()
            model(image)
            loss = -captured["out"][0, channel].mean()
            loss.backward()
            optimizer.step()
    finally:
        handle.remove()


def lucent_render(model: nn.Module, layer: str, channels: list[int], size: int, steps: int) -> None:
    """torch-lucent's render_vis for a batch of channels (one per batch member)."""
    from lucent.optvis import objectives, param, render

    objective = sum(objectives.channel(layer.replace(".", "_"), c, batch=i) for i, c in enumerate(channels))
    render.render_vis(model, objective, lambda: param.image(size, batch=len(channels)), thresholds=(steps,),
                      show_image=False, progress=False, fixed_image_size=size)


def lucent_available() -> str:
    """'' if lucent imports, else why not. IPython (for notebook display only) is stubbed."""
    if "IPython" not in sys.modules:
        stub = types.ModuleType("IPython")
        stub.display = types.ModuleType("IPython.display")
        sys.modules.update({"IPython": stub, "IPython.display": stub.display})
    try:
        from lucent.optvis import render  # noqa: F401
    except ImportError as error:
        return f"not installed ({error})"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tutorial-channels", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="wall-clock seconds (on an otherwise idle machine)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.wall else time.process_time
    torch.set_num_threads(args.threads)
    clock = "wall" if args.wall else "CPU"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}px, {args.steps} steps, "
          f"{clock} seconds")
    model = torchvision.models.resnet50().eval()
    missing = lucent_available()
    for layer, channels in CASES.items():
        per_channel = {
            "tutorial": seconds(lambda: [tutorial(model, layer, c, args.size, args.steps)
                                         for c in channels[:args.tutorial_channels]]) / args.tutorial_channels,
        }
        if not missing:
            per_channel["lucent"] = seconds(lambda: lucent_render(model, layer, channels, args.size, args.steps)) \
                / len(channels)
        for method in mx.METHODS:
            per_channel[method] = seconds(lambda: mx.maximize(model, layer, channels, args.size, args.steps,
                                                              method)) / len(channels)
        print(f"\nresnet50 {layer}, {len(channels)} channels: {clock} seconds per channel (ratio = other / this)")
        print(f"{'':10}{'s/channel':>10}{'tutorial/x':>12}{'lucent/x':>10}")
        for name, value in per_channel.items():
            lucent = f"{per_channel['lucent'] / value:10.2f}" if "lucent" in per_channel else f"{'-':>10}"
            print(f"{name:10}{value:10.3f}{per_channel['tutorial'] / value:12.2f}{lucent}")
        if missing:
            print(f"lucent: {missing}")
    lite0 = load_model()
    layer = mx.default_layer(lite0.module)
    both = seconds(lambda: [mx.maximize(lite0.module, layer, None, method=method, mean=lite0.preprocess.mean,
                                        std=lite0.preprocess.std) for method in mx.METHODS])
    print(f"\nEfficientNet-Lite0 defaults ({layer}, 8 channels, {mx.DEFAULT_SIZE}px, {mx.DEFAULT_STEPS} steps), "
          f"pixel + fourier: {both:.1f} {clock} s")


if __name__ == "__main__":
    main()
