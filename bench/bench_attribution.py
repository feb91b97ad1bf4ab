"""Time Integrated Gradients, occlusion and SmoothGrad against captum on ResNet-50 (random weights, CPU),
and RISE on its own (captum has no RISE).

Same settings on both sides: IG's n_steps and internal_batch_size, occlusion's window and stride
(captum's perturbations_per_eval = our batch size), SmoothGrad's samples and nt_samples_batch_size.
With --classes K > 1 ours computes all K classes in one call, captum is called once per class.
Each time is the median of --repeat runs after one warm-up. By default the bench runs on one thread
and counts this process's CPU seconds, which other processes on a shared machine barely disturb;
--wall --threads N measures wall-clock time instead.

Run: .venv/bin/python bench/bench_attribution.py [--size 112] [--images 1] [--repeat 3] [--classes 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from timing import timings

from auditor.techniques import attribution


def median_of(function: Callable[[], Any], repeat: int, clock: Callable[[], float]) -> float:
    """Median seconds of `repeat` runs, after one warm-up run."""
    return statistics.median(timings(function, repeat, clock))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1)
    parser.add_argument("--steps", type=int, default=16, help="IG steps (captum n_steps)")
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad samples (captum nt_samples)")
    parser.add_argument("--masks", type=int, default=500, help="RISE masks")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time
    batch, size = args.batch_size, args.size
    window = max(1, round(size / 8))  # occlusion's defaults
    stride = max(1, window // 2)

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()  # parameters require grad, as a user's model does
    x = torch.randn(args.images, 3, size, size)
    with torch.no_grad():
        targets = model(x).topk(args.classes, dim=1).indices  # [N, K]
    sigma = 0.15 * float(x.max() - x.min())  # captum takes one absolute sigma; ours is per image

    def per_class(call: Callable[[torch.Tensor], Any]) -> Callable[[], None]:
        return lambda: [call(column) for column in targets.T]

    ig, occ, nt = IntegratedGradients(model), Occlusion(model), NoiseTunnel(Saliency(model))
    pairs: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        (f"integrated gradients ({args.steps} steps)",
         lambda: attribution.integrated_gradients_attributions(model, x, targets, args.steps, batch_size=batch),
         per_class(lambda t: ig.attribute(x, target=t, n_steps=args.steps, internal_batch_size=batch))),
        (f"occlusion (window {window}, stride {stride})",
         lambda: attribution.occlusion_attributions(model, x, targets, window, stride, batch_size=batch),
         per_class(lambda t: occ.attribute(x, (3, window, window), target=t, strides=(3, stride, stride),
                                           perturbations_per_eval=batch))),
        (f"smoothgrad ({args.samples} samples)",
         lambda: attribution.smooth_grad(model, x, targets, args.samples, batch_size=batch),
         per_class(lambda t: nt.attribute(x, nt_type="smoothgrad", nt_samples=args.samples, stdevs=sigma,
                                          nt_samples_batch_size=max(1, batch // len(x)), target=t, abs=False))),
    ]
    print(f"ResNet-50, CPU ({torch.get_num_threads()} threads, {'wall' if args.wall else 'CPU'} seconds), "
          f"{args.images} images {size}x{size}, {args.classes} class(es) each, batch {batch}, "
          f"median of {args.repeat}")
    print(f"{'':38s} {'auditor':>9s} {'captum':>9s} {'captum/ours':>12s}")
    for name, ours, theirs in pairs:
        mine, reference = median_of(ours, args.repeat, clock), median_of(theirs, args.repeat, clock)
        print(f"{name:38s} {mine:9.3f} {reference:9.3f} {reference / mine:11.2f}x")
    seconds = median_of(lambda: attribution.rise(model, x, targets, args.masks, batch_size=batch), args.repeat, clock)
    print(f"{f'rise ({args.masks} masks, 7x7 cells)':38s} {seconds:9.3f} {'-':>9s} "
          f"{1000 * seconds / (args.images * args.masks):8.2f} ms/masked image")


if __name__ == "__main__":
    main()
