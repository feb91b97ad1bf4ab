"""Time Score-CAM, LayerCAM, XGrad-CAM, HiResCAM and Eigen-CAM on ResNet-50 (random weights, CPU)
against pytorch-grad-cam's ScoreCAM, LayerCAM, XGradCAM, HiResCAM and EigenCAM.

Score-CAM runs the network once per image and channel of layer4 (2048 each): 2 images of 64 x 64 by
default (--images, --size); both libraries get the same --batch-size of masked inputs per pass (pgc's
own default is 16). Ours is one cam_maps call per method, for one class per image, as pgc's call is.
Each time is the median of --repeat runs (after one warm-up for the quick methods; Score-CAM runs are
long enough to need none). By default the bench runs on two threads and counts wall-clock seconds;
--cpu counts this process's CPU seconds instead, which other processes on a shared machine barely disturb.

Run: OMP_NUM_THREADS=2 .venv/bin/python bench/bench_cam_methods.py [--size PX] [--images N] [--repeat N]
     [--threads N] [--batch-size N] [--cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytorch_grad_cam.score_cam as score_cam_module
import torch
import torchvision
from pytorch_grad_cam import EigenCAM, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timing import timings

from auditor.techniques import cam

LAYER = "layer4"
PGC = {"score-cam": ScoreCAM, "layer-cam": LayerCAM, "xgrad-cam": XGradCAM, "hires-cam": HiResCAM,
       "eigen-cam": EigenCAM}


def median_of(function: Callable[[], Any], repeat: int, clock: Callable[[], float], warm_up: bool) -> float:
    """Median seconds of `repeat` runs, after one warm-up run if asked."""
    return statistics.median(timings(function, repeat, clock, warm_up))


def ours(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str, batch_size: int) -> None:
    cam.cam_maps(model, x, targets, LAYER, methods=(method,), batch_size=batch_size)


def pgc(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, method: str, batch_size: int) -> None:
    with PGC[method](model=model, target_layers=[model.get_submodule(LAYER)]) as ref:
        ref.batch_size = batch_size  # read by ScoreCAM only
        ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpu", action="store_true", help="this process's CPU seconds instead of wall-clock")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu else time.perf_counter

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()  # parameters require grad, as a user's model does
    x = torch.randn(args.images, 3, args.size, args.size)
    with torch.no_grad():
        targets = model(x).argmax(dim=1)
        grid = tuple(model.layer4(model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(
            model.conv1(x[:1])))))))).shape[-2:])
    score_cam_module.tqdm = SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)  # no progress bars

    print(f"ResNet-50 {LAYER} ({grid[0]} x {grid[1]} x 2048), CPU ({torch.get_num_threads()} threads, "
          f"{'CPU' if args.cpu else 'wall'} seconds), {args.images} images {args.size}x{args.size}, one class each, "
          f"batch size {args.batch_size}, median of {args.repeat}")
    print(f"{'method':12s} {'auditor':>9s} {'pgc':>9s} {'ours faster by':>15s}")
    for method in PGC:
        warm_up = method != "score-cam"
        mine = median_of(lambda m=method: ours(model, x, targets, m, args.batch_size), args.repeat, clock, warm_up)
        theirs = median_of(lambda m=method: pgc(model, x, targets, m, args.batch_size), args.repeat, clock, warm_up)
        print(f"{method:12s} {mine:9.3f} {theirs:9.3f} {theirs / mine:14.2f}x")


if __name__ == "__main__":
    main()
