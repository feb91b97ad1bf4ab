"""Time Grad-CAM galleries on ResNet-50 (random weights, CPU, 8 images of 224 x 224) against
pytorch-grad-cam, captum (LayerGradCam) and torch-cam, and against a plain forward pass (the floor).

(a) a top-5 gallery: ours in one call for all 5 classes, the others called once per class;
(b) a single class per image.
Each time is the best of --repeat runs after one warm-up. By default the bench runs on one thread
and counts this process's CPU seconds, which other processes on a shared machine barely disturb;
--wall --threads N measures wall-clock time instead. torch-cam is optional: `pip install torchcam`.

Run: .venv/bin/python bench/bench_cam.py [--repeat N] [--images N] [--threads N] [--wall]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from captum.attr import LayerGradCam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from timing import timings

from auditor.techniques import cam

SIZE = 224
LAYER = "layer4"


def best_of(function: Callable[[], Any], repeat: int, clock: Callable[[], float]) -> float:
    """Seconds of the fastest of `repeat` runs, after one warm-up run."""
    return min(timings(function, repeat, clock))


def floor(model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def ours(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
    cam.grad_cam(model, LAYER, x, targets)


def ours_all_methods(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
    cam.cam_maps(model, x, targets, LAYER)


def pgc_per_class(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
    with GradCAM(model=model, target_layers=[model.get_submodule(LAYER)]) as grad_cam:
        for column in targets.T:
            grad_cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in column])


def captum_per_class(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
    method = LayerGradCam(model, model.get_submodule(LAYER))
    for column in targets.T:
        raw = method.attribute(x, target=column, relu_attributions=True)
        F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)  # as the others upsample


def torchcam_per_class(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
    from torchcam.methods import GradCAM as TorchCamGradCAM

    with TorchCamGradCAM(model, target_layer=LAYER) as extractor:
        for column in targets.T:
            extractor(column.tolist(), model(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wall", action="store_true", help="wall-clock time instead of CPU time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.process_time

    def timed(function: Callable[[], Any]) -> float:
        return best_of(function, args.repeat, clock)

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()  # parameters require grad, as a user's model does
    x = torch.randn(args.images, 3, SIZE, SIZE)
    with torch.no_grad():
        top5 = model(x).topk(5, dim=1).indices
    competitors: dict[str, Callable[..., None]] = {"pytorch-grad-cam": pgc_per_class, "captum": captum_per_class}
    try:
        import torchcam  # noqa: F401

        competitors["torch-cam"] = torchcam_per_class
    except ImportError:
        print("torch-cam not installed (pip install torchcam): skipped")

    print(f"ResNet-50, CPU ({torch.get_num_threads()} threads, {'wall' if args.wall else 'CPU'} seconds), "
          f"{args.images} images {SIZE}x{SIZE}, best of {args.repeat}")
    base = timed(lambda: floor(model, x))
    print(f"{'forward pass alone (floor)':34s} {base:8.3f} s")
    for label, targets in (("top-5 gallery", top5), ("single class", top5[:, :1])):
        report(label, targets, model, x, competitors, timed, base)


def report(label: str, targets: torch.Tensor, model: torch.nn.Module, x: torch.Tensor,
           competitors: dict[str, Callable[..., None]], timed: Callable[[Callable[[], Any]], float],
           base: float) -> None:
    """One table: seconds, milliseconds per image-class, and how much faster ours is than each."""
    pairs = targets.numel()
    mine = timed(lambda: ours(model, x, targets))
    print(f"\n{label}: {pairs} image-classes")
    print(f"{'':34s} {'seconds':>8s} {'ms/image-class':>15s} {'ours faster by':>15s}")
    rows = [("auditor grad_cam (one call)", mine),
            ("auditor cam_maps (all 3 methods)", timed(lambda: ours_all_methods(model, x, targets)))]
    rows += [(f"{name} (per class)", timed(lambda f=f: f(model, x, targets))) for name, f in competitors.items()]
    for name, seconds in rows:
        print(f"{name:34s} {seconds:8.3f} {1000 * seconds / pairs:15.1f} {seconds / mine:14.2f}x")
    print(f"{'auditor grad_cam / forward floor':34s} {mine / base:8.3f}")


if __name__ == "__main__":
    main()
