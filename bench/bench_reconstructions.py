"""Per-image time of auditor's guided backprop and deconvnet against captum's, on ResNet-50 (random
weights) at 224 px, a batch of 8, CPU; the median of a few repeats, after one warm-up call.

Run: .venv/bin/python bench/bench_reconstructions.py [--repeat N] [--batch N] [--size PX] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision
from captum.attr import Deconvolution, GuidedBackprop

from auditor.techniques.reconstructions import deconvnet, gradient, guided_backprop


def median_seconds(function: Callable[[], object], repeat: int) -> float:
    """Median wall time of `repeat` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    targets = torch.randint(0, 1000, (args.batch,))
    warnings.simplefilter("ignore")  # captum warns on every call that it sets backward hooks on ReLUs
    rows = [
        ("guided backprop", lambda: guided_backprop(model, x, targets),
         lambda: GuidedBackprop(model).attribute(x, target=targets)),
        ("deconvnet", lambda: deconvnet(model, x, targets),
         lambda: Deconvolution(model).attribute(x, target=targets)),
    ]
    plain = median_seconds(lambda: gradient(model, x, targets), args.repeat) / args.batch
    print(f"resnet50, {args.batch} images of {args.size} px, CPU ({torch.get_num_threads()} threads), "
          f"median of {args.repeat}; plain input gradient: {plain * 1000:.0f} ms/image")
    print(f"{'method':<16} {'auditor ms/img':>15} {'captum ms/img':>14} {'auditor/captum':>15}")
    for name, ours, theirs in rows:
        mine = median_seconds(ours, args.repeat) / args.batch
        captum = median_seconds(theirs, args.repeat) / args.batch
        print(f"{name:<16} {mine * 1000:>15.0f} {captum * 1000:>14.0f} {mine / captum:>15.2f}")


if __name__ == "__main__":
    main()
