"""Cost of the trust metrics next to the CAM maps they check, on the default model and bundled photos.

Run by hand: .venv/bin/python bench/bench_trust.py [--size 224] [--steps 5] [--trust-steps 8] [--device cpu]
Prints seconds per stage and the numbers the issue's checks are about: the Spearman curve of
Grad-CAM, guided backprop and the gradient under cascading randomisation with verdicts, and the
deletion / insertion AUCs of Grad-CAM against random maps.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from auditor.images import load_images
from auditor.models import load_model
from auditor.techniques import cam, reconstructions
from auditor.techniques.trust import gradient_saliency, randomization_cascade, sanity_verdict, spearman, ssim
from auditor.techniques.trust_perturbation import confidence_change, deletion_insertion, random_maps

Maps = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def method_maps(layer: str) -> dict[str, Maps]:
    """Each method as model, x, targets -> [N, H, W] in [0, 1]."""
    return {
        "grad-cam": lambda m, x, t: cam.grad_cam(m, layer, x, t),
        "guided-backprop": lambda m, x, t: gradient_saliency(reconstructions.guided_backprop(m, x, t)),
        "gradient": lambda m, x, t: gradient_saliency(reconstructions.gradient(m, x, t)),
    }


def timed(label: str, work: Callable[[], object]) -> object:
    start = time.perf_counter()
    result = work()
    print(f"{label:<38} {time.perf_counter() - start:7.2f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5, help="randomisation steps")
    parser.add_argument("--trust-steps", type=int, default=8, help="deletion / insertion fractions")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    loaded = load_model()
    model = loaded.module.to(args.device)
    images = load_images(None, loaded.preprocess.with_input_size(args.size))
    x = images.tensors.to(args.device)
    with torch.no_grad():  # not inference_mode: the targets feed autograd in the CAM functions
        targets = model(x).argmax(dim=1)
    layer = cam.choose_layer(model, x).name
    methods = method_maps(layer)
    original = {name: timed(f"maps: {name}", lambda f=f: f(model, x, targets)) for name, f in methods.items()}
    rho: dict[str, list[torch.Tensor]] = {name: [] for name in methods}
    structure: dict[str, list[torch.Tensor]] = {name: [] for name in methods}
    start = time.perf_counter()
    for label, randomised in randomization_cascade(model, args.steps, seed=0, example=x[:1]):
        for name, f in methods.items():
            maps = f(randomised, x, targets)
            rho[name].append(spearman(original[name], maps).cpu())
            structure[name].append(ssim(original[name], maps).cpu())
        print(f"  randomised down to {label}")
    print(f"{'randomisation cascade, all methods':<38} {time.perf_counter() - start:7.2f} s")
    for name in methods:
        curve = torch.stack(rho[name])
        print(f"{name:<16} spearman {' '.join(f'{r:.2f}' for r in curve.mean(1))}  "
              f"ssim {' '.join(f'{s:.2f}' for s in torch.stack(structure[name]).mean(1))}  -> {sanity_verdict(curve)}"
              f"  (last step per image: {' '.join(f'{r:.2f}' for r in curve[-1])})")
    grad_cam = original["grad-cam"]
    both = torch.stack([grad_cam, random_maps(grad_cam.shape, seed=0, device=args.device)], dim=1)
    for baseline in ("blur", "mean"):
        curves_di = timed(f"deletion/insertion ({baseline})", lambda b=baseline: deletion_insertion(
            model, x, both, targets, steps=args.trust_steps, baseline=b, batch_size=args.batch_size))
        d, i = curves_di.deletion_auc.mean(0), curves_di.insertion_auc.mean(0)
        print(f"  grad-cam deletion {d[0]:.3f} insertion {i[0]:.3f} | random deletion {d[1]:.3f} insertion {i[1]:.3f}"
              f" ({curves_di.images_evaluated} images)")
    change = timed("average drop / increase", lambda: confidence_change(model, x, both, targets, args.batch_size))
    print(f"  grad-cam drop {change.average_drop[0]:.1f}% increase {change.increase_in_confidence[0]:.0f}% | "
          f"random drop {change.average_drop[1]:.1f}% increase {change.increase_in_confidence[1]:.0f}%")


if __name__ == "__main__":
    main()
