"""The trust section's randomisation and faithfulness metrics against Quantus 0.6.0, for the same work (not a test).

    .venv/bin/python bench/bench_trust_quantus.py [--images 3] [--steps 6] [--no-road]

Model: the default EfficientNet-Lite0 (auditor.load_model()), on the CPU; images: the first --images bundled
photos and their top class; methods: Grad-CAM, guided backprop and the plain gradient (trained maps from our
saliency engine, given to both sides). What is timed:

- randomisation: Quantus `MPRT` (layer_order "top_down": cascading from the head, Spearman of |maps|, one
  call per method), with its layer generator replaced by our `randomization_cascade`, so that both sides
  explain the same --steps cumulative randomised copies (Quantus's own generator re-initialises one module
  per step, ~180 copies for this model). Its explain_func computes each map with our saliency engine for that
  one method (auditor.techniques.saliency.saliency, methods=[key]), so only the framework differs. Ours:
  the trust section's `cascade` (BatchNorms folded in each copy, the CAM layer kept; the three methods of a
  copy together, the gradient methods from one forward pass; Spearman and SSIM of every method and step at once).
  Our side gets the inputs in the audit's layout (channels-last where the model computes the same that way:
  auditor.nn.memory_format); Quantus gets numpy arrays, as its users give them.
- faithfulness: Quantus `PixelFlipping` (deletion only, "mean" baseline, H*W/7 pixels a step: 7 model passes
  a map, one image at a time) and `ROAD` (most relevant first, noisy linear imputation, at the same interior
  fractions as ours) versus our `deletion_insertion` (deletion AND insertion, --steps + 1 points, "mean"
  baseline, every perturbed image of every map batched, BatchNorms folded), for the same maps.

Prints the seconds of each and the ratio Quantus / ours. One uncounted cascade step runs first (a process's first
passes allocate what later ones reuse; Quantus, timed after ours, finds that done).
"""

from __future__ import annotations

import argparse
import time
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from auditor import load_images, load_model
from auditor.allocator import reuse_freed_memory
from auditor.nn.folding import folded_batch_norms
from auditor.nn.memory_format import preferred_layout
from auditor.nn.restore import audit_mode
from auditor.sections.trust import automatic_layer_name, cascade
from auditor.techniques.saliency import foldable_but_layer, saliency
from auditor.techniques.trust.perturbation import deletion_insertion
from auditor.techniques.trust.randomization import randomization_cascade

METHODS = ("grad-cam", "guided-backprop", "gradient")


@contextmanager
def our_cascade_in_quantus(steps: int, our_seed: int, example: torch.Tensor) -> Iterator[None]:
    """Quantus's PyTorchModel randomises through our cumulative cascade of `steps` copies."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    def generator(self: Any, order: str = "top_down", seed: int = 42) -> Iterator[tuple[str, torch.nn.Module]]:
        yield from randomization_cascade(self.model, steps, our_seed, example=example)

    saved = PyTorchModel.get_random_layer_generator, PyTorchModel.random_layer_generator_length
    PyTorchModel.get_random_layer_generator = generator
    PyTorchModel.random_layer_generator_length = property(lambda self: steps)
    try:
        yield
    finally:
        PyTorchModel.get_random_layer_generator, PyTorchModel.random_layer_generator_length = saved


def main() -> None:
    import quantus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--no-road", action="store_true", help="skip ROAD (its imputation is the slow part)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    reuse_freed_memory()  # as run_audit does; both sides' passes gain from it
    loaded = load_model()
    model = loaded.module.eval()
    images = load_images(None, loaded.preprocess, loaded.class_names)
    x = images.inputs(list(range(args.images)))
    x = x.contiguous(memory_format=preferred_layout(model, x[:1]))  # the audit's layout (AuditContext.memory_format)
    with audit_mode(model), torch.no_grad():
        top = model(x).argmax(dim=1)
    layer = automatic_layer_name(model, x)
    trained = saliency(model, x, top, layer, "logit", methods=list(METHODS))
    height, width = x.shape[-2:]

    # ours: the trust section's cascade and deletion_insertion
    ctx = types.SimpleNamespace(module=model, options=types.SimpleNamespace(seed=0), head=loaded_head(loaded),
                                progress=types.SimpleNamespace(each=lambda items, *a, **k: items),
                                spread_batches=lambda count, compute: [compute(slice(0, count))])
    with audit_mode(model):
        folds = foldable_but_layer(model, layer, x[:1])  # as the section: found once, on the trained model
    cascade(ctx, x, top, layer, "logit", trained, 1, {}, trained=folds)  # warm-up, uncounted: a process's first
    started = time.perf_counter()  # passes allocate
    _, scores, _, _, _ = cascade(ctx, x, top, layer, "logit", trained, args.steps, {}, trained=folds)
    ours_cascade = time.perf_counter() - started
    print(f"  (ours cascade {ours_cascade:.2f} s)", flush=True)
    stacked = torch.stack([trained.maps[m] for m in METHODS], dim=1)
    started = time.perf_counter()
    with audit_mode(model), folded_batch_norms(model, model, x[:1]):
        curves = deletion_insertion(model, x, stacked, top[:, None].expand(-1, len(METHODS)), steps=args.steps + 1,
                                    baseline="mean", batch_size=16, head=ctx.head)
    ours_faithfulness = time.perf_counter() - started
    print(f"  (ours deletion_insertion {ours_faithfulness:.2f} s)", flush=True)

    # Quantus: the same copies, maps, images and classes
    x_np, y_np = x.contiguous().numpy(), top.numpy()

    def explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, method: str = "",
                **kwargs: Any) -> np.ndarray:
        maps = saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets).long(), layer, "logit",
                        methods=[method]).maps.get(method)
        return (maps if maps is not None else torch.zeros(len(inputs), height, width))[:, None].numpy()

    started = time.perf_counter()
    mprt = {}
    with our_cascade_in_quantus(args.steps, 0, x[:1]):
        for method in METHODS:
            metric = quantus.MPRT(layer_order="top_down", abs=True, normalise=True, disable_warnings=True)
            mprt[method] = metric(model=model, x_batch=x_np, y_batch=y_np,
                                  a_batch=trained.maps[method][:, None].numpy(), explain_func=explain,
                                  explain_func_kwargs={"method": method}, device="cpu", batch_size=64)
    quantus_mprt = time.perf_counter() - started
    print(f"  (Quantus MPRT {quantus_mprt:.2f} s)", flush=True)

    flips = height * width // 7
    started = time.perf_counter()
    for method in METHODS:
        quantus.PixelFlipping(features_in_step=flips, perturb_baseline="mean", disable_warnings=True)(
            model=model, x_batch=x_np, y_batch=y_np, a_batch=trained.maps[method][:, None].numpy(),
            device="cpu", channel_first=True)
    quantus_flipping = time.perf_counter() - started
    print(f"  (Quantus PixelFlipping {quantus_flipping:.2f} s)", flush=True)
    quantus_road = None
    if not args.no_road:
        percentages = [100 * k / args.steps for k in range(1, args.steps)]
        started = time.perf_counter()
        try:
            for method in METHODS:
                quantus.ROAD(percentages=percentages, disable_warnings=True)(
                    model=model, x_batch=x_np, y_batch=y_np, a_batch=trained.maps[method][:, None].numpy(),
                    device="cpu", channel_first=True)
            quantus_road = time.perf_counter() - started
        except IndexError as error:  # Quantus 0.6.0's noisy_linear_imputation indexes a 1-channel map's pixels
            print(f"  Quantus ROAD failed: {error!r}")  # in x's 3-channel size (the run this bench was written on)

    print(f"EfficientNet-Lite0, CPU, {args.images} images, {args.steps} steps, methods {', '.join(METHODS)}")
    print(f"  randomisation: ours (cascade)              {ours_cascade:7.2f} s")
    print(f"                 Quantus MPRT (same copies)  {quantus_mprt:7.2f} s  ({quantus_mprt / ours_cascade:.1f}x ours)")
    print(f"  faithfulness:  ours (deletion + insertion) {ours_faithfulness:7.2f} s")
    print(f"                 Quantus PixelFlipping       {quantus_flipping:7.2f} s  "
          f"({quantus_flipping / ours_faithfulness:.1f}x ours)")
    if quantus_road is not None:
        print(f"                 Quantus ROAD                {quantus_road:7.2f} s  "
              f"({quantus_road / ours_faithfulness:.1f}x ours)")
    total_ours = ours_cascade + ours_faithfulness
    total_quantus = quantus_mprt + quantus_flipping
    print(f"  MPRT + PixelFlipping vs cascade + deletion_insertion: {total_quantus:.2f} s vs {total_ours:.2f} s "
          f"({total_quantus / total_ours:.1f}x)")
    spearman_ours = {m: [round(v, 3) for v in scores[m]["spearman"].mean(dim=1).tolist()] for m in METHODS}
    spearman_quantus = {m: [round(float(np.mean(v)), 3) for k, v in mprt[m].items() if k != "original"]
                        for m in METHODS}
    print(f"  mean Spearman per step, ours:    {spearman_ours}")
    print(f"  mean Spearman per step, Quantus: {spearman_quantus}")
    print(f"  deletion AUC, ours: {[round(v, 3) for v in curves.deletion_auc.mean(dim=0).tolist()]}")


def loaded_head(loaded: Any) -> Any:
    """The head the audit uses for this model (softmax for the default one)."""
    from auditor.inputs.models.heads import SOFTMAX

    return getattr(loaded, "head", SOFTMAX)


if __name__ == "__main__":
    main()
