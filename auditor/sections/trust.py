"""Trust section: how far to believe each saliency method, shown next to the explanations themselves.

Three kinds of evidence, on the first `--trust-images` gallery images and their top class:
- sanity (Adebayo et al. 2018): do the maps change when the model's weights are randomised layer by
  layer from the head down, and when another class is explained?
- faithfulness (Petsiuk et al. 2018; Chattopadhay et al. 2018): does removing the most salient pixels
  first destroy the prediction, and inserting them first restore it, faster than a random map does?
- localisation (with `--boxes`): does the map's peak fall on the object, and how much of its mass?
The methods, their order and names are those of the one table (auditor.methods). The maps of the
trained model are those the CAM and reconstruction sections drew (ctx.shared) when they ran; only the
randomised models' maps are new.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as PlotFigure
from PIL import Image
from torch import nn

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section, Table
from auditor.drawing import colorize, stack, titled, to_jpeg
from auditor.errors import AuditorError
from auditor.inputs.models.heads import Head
from auditor.methods import METHODS, cam_family, family, reusing
from auditor.nn.folding import folded_batch_norms
from auditor.option_checks import resolve_classes
from auditor.techniques.cam import CamNotApplicable, cam_maps, choose_layer
from auditor.techniques.reconstructions import gradient_saliency, rectifier_warnings
from auditor.techniques.trust.boxes import Box, mass_inside, pointing_game, read_boxes
from auditor.techniques.trust.perturbation import (
    confidence_change,
    deletion_insertion,
    random_maps,
)
from auditor.techniques.trust.randomization import (
    SANITY_THRESHOLD,
    random_other_class,
    randomization_cascade,
    sanity_verdict,
)
from auditor.techniques.trust.similarity import spearman, ssim

TILE_PX = 96


@dataclass
class Saliency:
    """Maps [N, H, W] in [0, 1] per method, and why a method is missing."""

    maps: dict[str, torch.Tensor]
    missing: dict[str, str]


def saliency(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, layer: str, target: str, head: Head,
             known: dict[str, torch.Tensor] | None = None, unavailable: dict[str, str] | None = None) -> Saliency:
    """Every method's map of `targets` [N] on `x`, in the table's order; methods in `known` (already
    computed) or `unavailable` (known not to apply, with why) are not redone, nor the gradients of a method
    no product still needs."""
    maps: dict[str, torch.Tensor] = {m: v.float().cpu() for m, v in (known or {}).items()}
    missing: dict[str, str] = dict(unavailable or {})
    cams = [method.key for method in cam_family()]
    if not set(cams) <= set(maps) | set(missing):
        try:
            result = cam_maps(model, x, targets[:, None], layer, target=target, head=head)
        except CamNotApplicable as error:  # no spatial layer at all: the whole CAM family is out, and its products
            missing.update({key: str(error) for key, method in METHODS.items()
                            if key in cams or set(method.reuses) & set(cams)})
        else:
            for key in cams:
                if key in result.maps:
                    maps.setdefault(key, result.maps[key][:, 0].float().cpu())
                else:
                    missing[key] = result.unavailable.get(key) or "not computed"
    gradients: dict[str, torch.Tensor] = {}
    for method in family("gradient"):
        if method.key in maps and all(product.key in maps for product in reusing(method.key)):
            continue
        with rectifier_warnings() as seen:
            found = method.compute(model, x, targets).float().cpu()
        if seen.plain:  # the plain gradient: not scored under the method's name
            maps.pop(method.key, None)
            missing[method.key] = seen.plain[0]
        else:
            gradients[method.key] = found
            maps.setdefault(method.key, gradient_saliency(found))
    for key, product in products(gradients, maps).items():
        maps.setdefault(key, product)
    for method in family("product"):
        if method.key not in maps:
            missing.setdefault(method.key, next((missing[k] for k in method.reuses if missing.get(k)), ""))
    return Saliency({key: maps[key] for key in METHODS if key in maps}, missing)


def products(gradients: dict[str, torch.Tensor], maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The maps of the products (Guided Grad-CAM) whose parts are all at hand: input gradients of the
    gradient methods, [N, H, W] maps of the CAM methods, of the same images and classes."""
    found: dict[str, torch.Tensor] = {}
    for method in family("product"):
        parts = [maps.get(key) if METHODS[key].family == "cam" else gradients.get(key) for key in method.reuses]
        if all(part is not None for part in parts):
            found[method.key] = gradient_saliency(method.compute(*parts))
    return found


def automatic_layer_name(model: nn.Module, x: torch.Tensor) -> str | None:
    """The CAM layer chosen once on the trained model, so that every randomised copy is explained at the
    same layer (and the choice, a forward and backward pass, is not redone per copy); None when the model
    has none (saliency then says why the CAM family is missing)."""
    try:
        return choose_layer(model, x).name
    except CamNotApplicable:
        return None


def known_maps(ctx: AuditContext, rows: list[int]) -> dict[str, torch.Tensor]:
    """The trained model's maps that the CAM and reconstruction sections already computed for these images."""
    known: dict[str, torch.Tensor] = {}
    cam = ctx.shared.cam.rows(rows) if ctx.shared.cam is not None else None
    known.update(cam or {})
    gradients = {key: found.float() for key, shared in ctx.shared.gradients.items()
                 if (found := shared.rows(rows)) is not None}
    known.update({key: gradient_saliency(found) for key, found in gradients.items()})
    known.update(products(gradients, known))
    return known


def cascade(ctx: AuditContext, x: torch.Tensor, top: torch.Tensor, layer: str, target: str,
            original: Saliency, steps: int) -> tuple[list[str], dict[str, dict[str, torch.Tensor]],
                                                    list[dict[str, torch.Tensor]]]:
    """Per step label, per method the Spearman and SSIM [steps, N] against the trained maps, and the maps."""
    labels: list[str] = []
    scores: dict[str, dict[str, list[torch.Tensor]]] = {m: {"spearman": [], "ssim": []} for m in original.maps}
    step_maps = []
    for label, randomised in ctx.progress.each(randomization_cascade(ctx.module, steps, ctx.options.seed,
                                                                     example=x[:1]), "steps", total=steps):
        labels.append(label)
        found = saliency(randomised, x, top, layer, target, ctx.head).maps
        step_maps.append(found)
        for method, trained in original.maps.items():
            after = found.get(method, torch.zeros_like(trained))
            scores[method]["spearman"].append(spearman(trained, after))
            scores[method]["ssim"].append(ssim(trained, after))
    return labels, {m: {k: torch.stack(v) for k, v in s.items()} for m, s in scores.items()}, step_maps


def boxes_for(ctx: AuditContext, path: str) -> list[tuple[int, int, Box]]:
    """(image index, class index, box) for each box of the file whose image is audited."""
    by_name: dict[str, int] = {}
    for index, name in enumerate(ctx.images.names):
        by_name.setdefault(name, index)
        by_name.setdefault(Path(name).name, index)
    found = []
    for box in read_boxes(path):
        index = by_name.get(box.image, by_name.get(Path(box.image).name))
        if index is None:
            continue
        (class_index,) = resolve_classes((box.label,), ctx.class_names, "--boxes")
        found.append((index, class_index, box))
    if not found:
        raise AuditorError(f"--boxes: no box in {path} names an audited image; use the names of report's image list")
    return found


def localisation(ctx: AuditContext, path: str, layer: str, target: str) -> dict[str, dict[str, float]]:
    """Pointing-game accuracy and mass inside the boxes per method, over every (image, class) with boxes."""
    groups: dict[tuple[int, int], list[Box]] = {}
    for index, class_index, box in boxes_for(ctx, path):
        groups.setdefault((index, class_index), []).append(box)
    keys = list(groups)
    x = ctx.inputs([i for i, _ in keys])
    targets = torch.tensor([c for _, c in keys], device=ctx.device)
    found = saliency(ctx.module, x, targets, layer, target, ctx.head)
    rects = [[b.rect for b in groups[key]] for key in keys]
    sizes = [ctx.images.sizes[i] for i, _ in keys]
    results = {}
    for method, maps in found.maps.items():
        hits = pointing_game(maps, rects, sizes, ctx.model.preprocess)
        mass = mass_inside(maps, rects, sizes, ctx.model.preprocess)
        results[method] = {"pointing_accuracy": float(hits.float().mean()),
                           "mass_inside": float(torch.nanmean(mass)), "boxes": len(keys)}
    return results


def plot(labels: list[str], scores: dict[str, dict[str, torch.Tensor]], curves: Any, names: list[str]) -> bytes:
    """Randomisation curves (Spearman, SSIM) and mean deletion / insertion curves: one PNG, four panels."""
    figure = PlotFigure(figsize=(10, 7.2), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    (rank, structure), (delete, insert) = figure.subplots(2, 2)
    steps = np.arange(1, len(labels) + 1)
    for method, score in scores.items():
        rank.plot(steps, score["spearman"].mean(dim=1).numpy(), marker="o", label=METHODS[method].name)
        structure.plot(steps, score["ssim"].mean(dim=1).numpy(), marker="o", label=METHODS[method].name)
    for axis, title in ((rank, "Spearman rank correlation of |maps|"), (structure, "SSIM of maps")):
        axis.set_title(title, fontsize=10)
        axis.set_xticks(steps, [f"{i}: {label}" for i, label in zip(steps, labels)], rotation=35, ha="right",
                        fontsize=7)
        axis.set_xlabel("randomised down to (cumulative, head first)", fontsize=8)
        axis.set_ylim(-0.6, 1.05)
        axis.axhline(0, color="#999", linewidth=0.6)
    rank.axhline(SANITY_THRESHOLD, color="#b3261e", linestyle="--", linewidth=0.8)
    rank.legend(fontsize=7)
    fractions = curves.fractions.cpu().numpy()
    for axis, values, title in ((delete, curves.deletion, "Deletion: most salient pixels removed first (lower is "
                                                           "better)"),
                                (insert, curves.insertion, "Insertion: most salient pixels added first (higher is "
                                                           "better)")):
        mean = values.mean(dim=0).cpu().numpy()  # [methods, steps]
        for column, name in enumerate(names):
            style = {"color": "black", "linestyle": ":"} if name == "random map" else {}
            axis.plot(fractions, mean[column], label=name, **style)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("fraction of pixels", fontsize=8)
        axis.set_ylabel("probability of the top class", fontsize=8)
    insert.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def cascade_colours(cmap: str) -> str:
    """The cascade's colours in words: each tile runs from zero to its own 99th percentile."""
    if cmap == "jet":
        return "jet: dark blue zero, dark red at the map's 99th percentile"
    return f"{cmap}: its low end zero, its high end the map's 99th percentile"


def cascade_picture(ctx: AuditContext, index: int, original: Saliency, labels: list[str],
                    step_maps: list[dict[str, torch.Tensor]]) -> bytes:
    """One image: each method's map (rows) on the trained model, then after each randomisation step."""
    photo = ctx.photo(index, TILE_PX)
    header = [titled(Image.new("RGB", (TILE_PX, 1), "white"), text, size=10)
              for text in ["", "trained", *labels[:-1], "all random"]]
    rows = [stack(header, vertical=False, gap=3)]
    for method, trained in original.maps.items():
        maps = [trained[0]] + [step.get(method, torch.zeros_like(trained))[0] for step in step_maps]
        # each tile to its own 99th percentile: gradient maps are heavy-tailed and would show black
        tiles = [Image.fromarray(colorize(m.numpy(), ctx.options.colormap, 0.0, float(np.percentile(m.numpy(), 99)) or 1.0))
                 .resize((TILE_PX, TILE_PX)) for m in maps]
        label = Image.new("RGB", (TILE_PX, TILE_PX), "white")
        rows.append(stack([titled(label, METHODS[method].name, size=10), *tiles], vertical=False, gap=3))
    return to_jpeg(stack([titled(photo, ctx.images.names[index], size=10), *rows], gap=3))


def trust_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    started = time.perf_counter()
    rows = ctx.gallery_indices()[:settings["trust_images"]]
    x = ctx.inputs(rows)
    top = ctx.forward.top_indices[rows, 0].clone().to(ctx.device)
    cam = ctx.shared.cam
    layer = (cam and cam.layer) or ctx.options.settings.get("cam_layer") or automatic_layer_name(ctx.module, x)
    target = (cam and cam.target) or ctx.options.settings.get("cam_target") or "logit"
    shared_cam = ctx.shared.cam if ctx.shared.cam is not None and ctx.shared.cam.rows(rows) is not None else None
    original = saliency(ctx.module, x, top, layer, target, ctx.head, known_maps(ctx, rows),
                        shared_cam.unavailable if shared_cam is not None else None)
    steps = settings["trust_steps"]
    labels, scores, step_maps = cascade(ctx, x, top, layer, target, original, steps)
    other = random_other_class(top, len(ctx.class_names), ctx.options.seed)
    other_maps = saliency(ctx.module, x, other, layer, target, ctx.head).maps
    methods = list(original.maps)
    stacked = torch.stack([original.maps[m] for m in methods] + [random_maps(original.maps[methods[0]].shape,
                                                                             ctx.options.seed)], dim=1)
    targets = top[:, None].expand(-1, stacked.shape[1]).to(x.device)
    with folded_batch_norms(ctx.module, ctx.module, x[:1]):  # hundreds of perturbed images through one model
        curves = deletion_insertion(ctx.module, x, stacked.to(x.device), targets, steps=steps + 1,
                                    baseline=settings["trust_baseline"], batch_size=max(16, ctx.options.batch_size),
                                    head=ctx.head)
        confidence = confidence_change(ctx.module, x, stacked.to(x.device), targets,
                                       batch_size=max(16, ctx.options.batch_size), head=ctx.head)
    boxes = localisation(ctx, settings["boxes"], layer, target) if settings["boxes"] else {}
    results: dict[str, dict[str, Any]] = {}
    for column, method in enumerate(methods):
        curve = scores[method]["spearman"]
        results[method] = {
            "randomization": {"verdict": sanity_verdict(curve), "spearman": curve.mean(dim=1).tolist(),
                              "ssim": scores[method]["ssim"].mean(dim=1).tolist(), "steps": labels},
            "random_logit_spearman": float(spearman(original.maps[method], other_maps[method]).mean())
            if method in other_maps else None,
            "deletion_auc": float(curves.deletion_auc[:, column].mean()),
            "deletion_auc_sd": float(curves.deletion_auc[:, column].std(correction=0)),
            "insertion_auc": float(curves.insertion_auc[:, column].mean()),
            "insertion_auc_sd": float(curves.insertion_auc[:, column].std(correction=0)),
            "average_drop": float(confidence.average_drop[column]),
            "increase_in_confidence": float(confidence.increase_in_confidence[column]),
            **boxes.get(method, {}),
        }
    random_column = len(methods)
    baseline = {"deletion_auc": float(curves.deletion_auc[:, random_column].mean()),
                "insertion_auc": float(curves.insertion_auc[:, random_column].mean()),
                "average_drop": float(confidence.average_drop[random_column]),
                "increase_in_confidence": float(confidence.increase_in_confidence[random_column])}
    seconds = time.perf_counter() - started
    columns = ["method", "sanity", "mean Spearman", "other class", "deletion AUC ↓", "insertion AUC ↑",
               "avg drop % ↓", "increase % ↑"] + (["pointing", "mass in box"] if boxes else [])
    table_rows = []
    for method, r in results.items():
        row = [METHODS[method].name, r["randomization"]["verdict"],
               round(float(np.mean(r["randomization"]["spearman"])), 3),
               None if r["random_logit_spearman"] is None else round(r["random_logit_spearman"], 3),
               f"{r['deletion_auc']:.3f} ± {r['deletion_auc_sd']:.3f}",
               f"{r['insertion_auc']:.3f} ± {r['insertion_auc_sd']:.3f}",
               round(r["average_drop"], 1), round(r["increase_in_confidence"], 1)]
        if boxes:
            row += [round(r.get("pointing_accuracy", float("nan")), 3), round(r.get("mass_inside", float("nan")), 3)]
        table_rows.append(row)
    table_rows.append(["random map", "", None, None, f"{baseline['deletion_auc']:.3f}",
                       f"{baseline['insertion_auc']:.3f}", round(baseline["average_drop"], 1),
                       round(baseline["increase_in_confidence"], 1)] + (["", ""] if boxes else []))
    n = len(rows)
    table = Table(
        "trust-summary",
        f"How far to trust each saliency method, on {n} image{'s' if n != 1 else ''} and their top class. Sanity: "
        f"“pass” when the maps' Spearman rank correlation with the trained model's, averaged over {len(labels)} "
        f"cumulative randomisation steps from the head down, is below {SANITY_THRESHOLD} (the maps depend on "
        f"what the model learnt), else “warn”. Other class: correlation with the map of a random other class "
        f"(high means the map ignores the class). Deletion and insertion AUC (mean ± standard deviation over the "
        f"images): probability of the top class as the most salient pixels are replaced by {curves.baseline} or "
        f"restored from it, in {steps + 1} steps; compare with the random map. Average drop and increase in "
        f"confidence: the image multiplied by its map."
        + (" Pointing: share of boxes whose map peak lies within 15 px of the box; mass in box: share of the map "
           "inside it." if boxes else ""),
        columns, table_rows)
    blocks: list[Any] = [
        table,
        Figure("trust-curves", f"Top: the randomisation test, mean over the {n} images: similarity of each method's "
                               f"map to the trained model's as the weights are randomised cumulatively from the head "
                               f"down (dashed red: the {SANITY_THRESHOLD} threshold for the averaged Spearman). "
                               f"Bottom: mean deletion and insertion curves, with the random map dotted.",
               plot(labels, scores, curves, [METHODS[m].name for m in methods] + ["random map"]), "image/png",
               alt="Randomisation and deletion / insertion curves per method."),
        Figure(f"trust-cascade-{ctx.images.names[rows[0]]}",
               f"The randomisation test on {ctx.images.names[rows[0]]}: each method's map (rows, "
               f"{cascade_colours(ctx.options.colormap)}) on the trained model, then after each cumulative "
               f"randomisation step. A method whose maps keep their shape as the model loses its weights shows "
               f"the image's edges, not the model.",
               cascade_picture(ctx, rows[0], original, labels, step_maps), "image/jpeg",
               alt="Maps of each method under cascading randomisation."),
    ]
    cost = {"images": n, "cascade_steps": len(labels), "perturbation_steps": steps + 1,
            "forward_images": curves.images_evaluated + n * stacked.shape[1] + n, "seconds": round(seconds, 2)}
    text = ("No explanation method is right by construction, so this section tests each one on this model. The "
            "randomisation test (Adebayo et al., 2018) asks whether a map depends on the learnt weights at all: "
            "guided backprop and Guided Grad-CAM are known to keep their picture when the weights are destroyed, "
            "acting as edge detectors, while Grad-CAM changes. Deletion and insertion (Petsiuk et al., 2018) ask "
            "whether the pixels a map ranks highest are the ones the prediction needs. The metrics can disagree "
            "with each other and vary between images (see the ± spread): read them together, and prefer methods "
            f"that pass the sanity check and beat the random map on both curves. Cost: {cost['forward_images']} "
            f"images through the model (its time is in the appendix); --trust-images and --trust-steps trade it "
            f"against precision.")
    notes = [f"{METHODS[m].name} is not scored: {why}" for m, why in original.missing.items() if why]
    metrics = {"methods": results, "random_baseline": baseline, "baseline": curves.baseline,
               "images": [ctx.images.names[i] for i in rows], "threshold": SANITY_THRESHOLD, "cost": cost}
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics, notes=notes)
