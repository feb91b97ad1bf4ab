"""Trust section: how far to believe each saliency method, shown next to the explanations themselves.

Three kinds of evidence, on the first `--trust-images` gallery images and their top class:
- sanity (Adebayo et al. 2018): do the maps change when the model's weights are randomised layer by
  layer from the head down, and when another class is explained?
- faithfulness (Petsiuk et al. 2018; Chattopadhay et al. 2018): does removing the most salient pixels
  first destroy the prediction, and inserting them first restore it, faster than a random map does?
- localisation (with `--boxes`): does the map's peak fall on the object, and how much of its mass?
The methods are those the report draws (`trust_methods`), in the order and with the names of the one
table (auditor.methods); the ones that take many passes per map are randomised at fewer steps. The maps of
the trained model are those the CAM, reconstruction and attribution sections drew (ctx.shared) when they
ran; only the randomised models' maps are new. The section ends with the one method it recommends.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as PlotFigure
from PIL import Image
from torch import nn

from auditor.context import AuditContext
from auditor.declarations import Attribution, ClassActivationMaps
from auditor.document import Figure, Heading, Section, Table
from auditor.drawing import colorize, stack, titled, to_jpeg
from auditor.errors import AuditorError
from auditor.methods import METHODS, attribution_settings, passes
from auditor.nn.folding import Folds, folded
from auditor.nn.restore import audit_mode
from auditor.option_checks import resolve_classes
from auditor.techniques.cam import CamNotApplicable, choose_layer
from auditor.techniques.reconstructions import gradient_saliency
from auditor.techniques.saliency import Saliency, foldable_but_layer, products, saliency
from auditor.techniques.trust.boxes import Box, mass_inside, pointing_game, read_boxes
from auditor.techniques.trust.perturbation import (
    ConfidenceChange,
    PerturbationCurves,
    confidence_change,
    deletion_insertion,
    random_maps,
)
from auditor.techniques.trust.randomization import (
    SANITY_THRESHOLD,
    parametrised_layers,
    random_other_class,
    randomization_cascade,
    sanity_verdict,
)
from auditor.techniques.trust.recommendation import recommend
from auditor.techniques.trust.similarity import spearman, ssim

TILE_PX = 96


def automatic_layer_name(model: nn.Module, x: torch.Tensor) -> str | None:
    """The CAM layer chosen once on the trained model, so that every randomised copy is explained at the
    same layer (and the choice, a forward and backward pass, is not redone per copy); None when the model
    has none (saliency then says why the CAM family is missing)."""
    try:
        return choose_layer(model, x).name
    except CamNotApplicable:
        return None


def known_maps(ctx: AuditContext, rows: list[int]) -> dict[str, torch.Tensor]:
    """The trained model's maps that the CAM, reconstruction and attribution sections already computed for
    these images."""
    known: dict[str, torch.Tensor] = {}
    cam = ctx.shared.cam.rows(rows) if ctx.shared.cam is not None else None
    known.update(cam or {})
    gradients = {key: found.float() for key, shared in ctx.shared.gradients.items()
                 if (found := shared.rows(rows)) is not None}
    known.update({key: gradient_saliency(found) for key, found in gradients.items()})
    known.update(products(gradients, known))
    attribution = ctx.shared.attribution.rows(rows) if ctx.shared.attribution is not None else None
    known.update(attribution or {})
    return known


def cascade(ctx: AuditContext, x: torch.Tensor, top: torch.Tensor, layer: str, target: str,
            original: Saliency, steps: int, settings: dict[str, Any], *, trained: Folds,
            other: dict[str, torch.Tensor] | None = None, steps_for: Callable[[str], Collection[int]] | None = None
            ) -> tuple[list[str], dict[str, dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], list[float],
                       dict[str, float]]:
    """Per step label, per method the Spearman and SSIM [steps, N] against the trained maps, the maps, each
    step's seconds, and per method of `other` (the trained model's maps of another class: the random-logit
    check) their mean Spearman with the trained maps. `settings` are the attribution methods' (the trained
    maps' own).

    Each randomised copy runs with the trained model's folds `trained` (the CAM layer kept out), carried to the
    copy by name (`Folds.in_copy`: which module reads which tensor does not change with the weights; the copy
    is one model, re-initialised step by step), a --batch-size block of images at a time, and computes, per
    method, only the steps `steps_for(method)` names (indices into the cascade's steps; None: every step): a
    method's curves are NaN at the steps it skips, and its maps are absent from those steps' dicts. The
    similarities of every (method, step), and the other class's Spearman, are computed together, each trained
    map ranked once.
    """
    methods = list(original.maps)
    wanted = {m: None if steps_for is None else set(steps_for(m)) for m in methods}
    labels: list[str] = []
    step_maps: list[dict[str, torch.Tensor]] = []
    pairs: list[tuple[int, int, torch.Tensor]] = []  # (method's position, step, its map after the step)
    seconds: list[float] = []
    folds: Folds | None = None  # the trained model's, in the copy: one model, re-initialised step by step
    for step, (label, randomised) in enumerate(ctx.progress.each(
            randomization_cascade(ctx.module, steps, ctx.options.seed, example=x[:1]), "steps", total=steps)):
        started = time.perf_counter()
        labels.append(label)
        chosen = [m for m in methods if wanted[m] is None or step in wanted[m]]
        found: dict[str, torch.Tensor] = {}
        if chosen:
            folds = trained.in_copy(ctx.module, randomised) if folds is None else folds
            with audit_mode(randomised), folded(folds):
                found = Saliency.joined(ctx.spread_batches(len(x), lambda rows, model=randomised, methods=chosen:
                                                           saliency(model, x[rows], top[rows], layer, target,
                                                                    ctx.head, methods=methods,
                                                                    settings=settings))).maps
        step_maps.append(found)
        seconds.append(time.perf_counter() - started)
        pairs += [(methods.index(m), step, found.get(m, torch.zeros_like(original.maps[m]))) for m in chosen]
    skipped = [m for m in methods if not any(methods[i] == m for i, _, _ in pairs)]
    if skipped:
        raise ValueError(f"cascade: {', '.join(skipped)} computed at none of the {len(labels)} steps")
    references = torch.stack([original.maps[m] for m in methods])  # [M, N, H, W]
    other = other or {}
    compared = [m for m in methods if m in other]
    index = torch.tensor([i for i, _, _ in pairs] + [methods.index(m) for m in compared])
    after = torch.stack([found for _, _, found in pairs] + [other[m] for m in compared])  # [P + O, N, H, W]
    ranked = spearman(references, after, index)
    structure = ssim(references, after[:len(pairs)], index=index[:len(pairs)])
    count = references.shape[1]
    scores = {m: {k: torch.full((len(labels), count), float("nan")) for k in ("spearman", "ssim")} for m in methods}
    for p, (i, step, _) in enumerate(pairs):
        scores[methods[i]]["spearman"][step] = ranked[p]
        scores[methods[i]]["ssim"][step] = structure[p]
    return labels, scores, step_maps, seconds, dict(zip(compared, ranked[len(pairs):].mean(dim=1).tolist()))


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


def localisation(ctx: AuditContext, path: str, layer: str, target: str, methods: list[str],
                 settings: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Pointing-game accuracy and mass inside the boxes per method, over every (image, class) with boxes."""
    groups: dict[tuple[int, int], list[Box]] = {}
    for index, class_index, box in boxes_for(ctx, path):
        groups.setdefault((index, class_index), []).append(box)
    keys = list(groups)
    x = ctx.inputs([i for i, _ in keys])
    targets = torch.tensor([c for _, c in keys], device=ctx.device)
    found = saliency(ctx.module, x, targets, layer, target, ctx.head, methods=methods, settings=settings)
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
    """Randomisation curves (Spearman, SSIM) and mean deletion / insertion curves: one PNG, four panels and
    one legend on the right, each method one colour of tab20 (dashed: the many-pass methods).

    A method computed at a subset of the cascade's steps (NaN elsewhere) is drawn through its computed
    steps only. The margins are set from the longest step label (a layout engine costs more than the rest
    of the figure)."""
    figure = PlotFigure(figsize=(11.5, 7.2), dpi=110)
    FigureCanvasAgg(figure)
    (rank, structure), (delete, insert) = figure.subplots(2, 2)
    palette = colormaps["tab20"].colors
    styles = [{"color": palette[(2 * i) % 20 + (2 * i) // 20 % 2], "linestyle": "--" if METHODS[m].many_passes
               else "-"} for i, m in enumerate(scores)]
    steps = np.arange(1, len(labels) + 1)
    for (method, score), style in zip(scores.items(), styles):
        for axis, key in ((rank, "spearman"), (structure, "ssim")):
            mean = score[key].mean(dim=1).numpy()
            computed = np.isfinite(mean)
            axis.plot(steps[computed], mean[computed], marker="o", markersize=4, label=METHODS[method].name, **style)
    ticks = [f"{i}: {label}" for i, label in zip(steps, labels)]
    for axis, title in ((rank, "Spearman rank correlation of |maps|"), (structure, "SSIM of maps")):
        axis.set_title(title, fontsize=10, y=1.0)  # a fixed place: no layout pass for it
        axis.set_xticks(steps, ticks, rotation=35, ha="right", fontsize=7)
        axis.set_xlabel("randomised down to (cumulative, head first)", fontsize=8)
        axis.set_ylim(-0.6, 1.05)
        axis.axhline(0, color="#999", linewidth=0.6)
    rank.axhline(SANITY_THRESHOLD, color="#b3261e", linestyle="--", linewidth=0.8)
    fractions = curves.fractions.cpu().numpy()
    random_style = {"color": "black", "linestyle": ":"}
    for axis, values, title in ((delete, curves.deletion,
                                 "Deletion: most salient pixels removed first (lower is better)"),
                                (insert, curves.insertion,
                                 "Insertion: most salient pixels added first (higher is better)")):
        mean = values.mean(dim=0).cpu().numpy()  # [methods, steps]
        for column, name in enumerate(names):
            style = random_style if name == "random map" else styles[column]
            axis.plot(fractions, mean[column], label=name, **style)
        axis.set_title(title, fontsize=10, y=1.0)
        axis.set_xlabel("fraction of pixels", fontsize=8)
        axis.set_ylabel("probability of the top class", fontsize=8)
    handles, legend_names = insert.get_legend_handles_labels()
    figure.legend(handles, legend_names, loc="center right", fontsize=8, frameon=False)
    # the gap under the top row: the rotated tick labels (about 0.55 em a character at 7 pt, at 35 degrees),
    # the x label and the bottom row's title, in inches; hspace is that gap over the panels' height
    longest = max((len(tick) for tick in ticks), default=0)
    gap = (longest * 0.55 * 7 * np.sin(np.radians(35)) + 7 * np.cos(np.radians(35))) / 72 + 0.65
    panels = 7.2 - 0.3 - 0.5  # the figure's height less the top and bottom margins
    figure.subplots_adjust(left=0.06, right=0.82, top=1 - 0.3 / 7.2, bottom=0.5 / 7.2, wspace=0.2,
                           hspace=min(2.0, gap / ((panels - gap) / 2)))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def cascade_colours(cmap: str) -> str:
    """The cascade's colours in words: each tile runs from zero to its own 99th percentile."""
    if cmap == "jet":
        return "jet: dark blue zero, dark red at the map's 99th percentile"
    return f"{cmap}: its low end zero, its high end the map's 99th percentile"


def cascade_tile(heat: torch.Tensor | None, cmap: str) -> Image.Image:
    """One map to its own 99th percentile (gradient maps are heavy-tailed and would show black); grey for a
    step the method skipped. The map is resized (antialiased) before it is coloured: at 224 px, 5x fewer pixels
    to colour, and no colours blended by the resize."""
    if heat is None:
        return Image.new("RGB", (TILE_PX, TILE_PX), (205, 205, 205))
    top = float(np.percentile(heat.numpy(), 99)) or 1.0
    tile = F.interpolate(heat.float()[None, None], size=(TILE_PX, TILE_PX), mode="bilinear", antialias=True)
    return Image.fromarray(colorize(tile[0, 0].numpy(), cmap, 0.0, top))


def cascade_picture(ctx: AuditContext, index: int, original: Saliency, labels: list[str],
                    step_maps: list[dict[str, torch.Tensor]]) -> bytes:
    """One image: each method's map (rows) on the trained model, then after each randomisation step."""
    photo = ctx.photo(index, TILE_PX)
    header = [titled(Image.new("RGB", (TILE_PX, 1), "white"), text, size=10)
              for text in ["", "trained", *labels[:-1], "all random"]]
    rows = [stack(header, vertical=False, gap=3)]
    for method, trained in original.maps.items():
        maps = [trained[0]] + [step[method][0] if method in step else None for step in step_maps]
        tiles = [cascade_tile(m, ctx.options.colormap) for m in maps]
        label = Image.new("RGB", (TILE_PX, TILE_PX), "white")
        rows.append(stack([titled(label, METHODS[method].name, size=10), *tiles], vertical=False, gap=3))
    return to_jpeg(stack([titled(photo, ctx.images.names[index], size=10), *rows], gap=3))


def trust_methods(ctx: AuditContext) -> list[str]:
    """The methods the report draws, in the table's order: the CAM methods of --cam-methods, every gradient
    method and product, and, when the attribution section runs, the attribution methods of
    --attribution-methods (the costly ones: a report without them does not pay for their rows)."""
    cams = set(ctx.options.of(ClassActivationMaps)["cam_methods"])
    runs = (not ctx.options.techniques or Attribution.name in ctx.options.techniques) and \
        Attribution.name not in ctx.options.skip
    attributions = set(ctx.options.of(Attribution)["attribution_methods"]) if runs else set()
    return [key for key, method in METHODS.items()
            if method.family in ("gradient", "product") or key in cams or key in attributions]


def costly_steps(steps: int, costly: int) -> list[int]:
    """`costly` of the cascade's step indices, at the middles of `costly` equal parts of it: their mean
    similarity stands for the whole cascade's, which is what the verdict reads (1 of 6: the 4th step;
    2 of 6: the 2nd and 5th)."""
    count = min(costly, steps)
    return sorted({int((i + 0.5) * steps / count) for i in range(count)})


def trusted_settings(ctx: AuditContext, size: tuple[int, int]) -> dict[str, Any]:
    """The attribution settings the attribution section used (or would use): the same maps, randomised."""
    if ctx.shared.attribution is not None:
        return ctx.shared.attribution.settings
    return attribution_settings(ctx.options.of(Attribution), ctx.options.batch_size, ctx.options.seed, size)


def _finite(values: torch.Tensor) -> list[float | None]:
    """A curve for report.json: NaN (a step a costly method skips) as null."""
    return [None if not np.isfinite(v) else float(v) for v in values.tolist()]


def _rows(maps: dict[str, torch.Tensor], block: slice) -> dict[str, torch.Tensor]:
    """A block of images' maps, of maps computed for several images."""
    return {key: value[block] for key, value in maps.items()}


def trust_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    """Under torchrun every rank runs this (the Trust technique spreads): each scores its share of the
    images, a --batch-size block at a time, as one process does; rank 0 alone draws and writes the section."""
    started = time.perf_counter()
    ctx.share_from_main()
    rows = ctx.gallery_indices()[:settings["trust_images"]]
    x = ctx.inputs(rows)
    top = ctx.forward.top_indices[rows, 0].clone().to(ctx.device)
    cam = ctx.shared.cam
    layer = (cam and cam.layer) or ctx.options.settings.get("cam_layer") or automatic_layer_name(ctx.module, x)
    target = (cam and cam.target) or ctx.options.settings.get("cam_target") or "logit"
    shared_cam = ctx.shared.cam if ctx.shared.cam is not None and ctx.shared.cam.rows(rows) is not None else None
    shared_attribution = ctx.shared.attribution
    unavailable = {**(shared_cam.unavailable if shared_cam is not None else {}),
                   **(shared_attribution.unavailable if shared_attribution is not None else {})}
    wanted = trust_methods(ctx)
    used = trusted_settings(ctx, (x.shape[-2], x.shape[-1]))
    known = known_maps(ctx, rows)
    other = random_other_class(top, len(ctx.class_names), ctx.options.seed)
    known_other = shared_attribution.other_rows(rows, other) if shared_attribution is not None else {}
    steps = settings["trust_steps"]
    batch = max(16, ctx.options.batch_size)

    def faithfulness(block: slice) -> tuple[PerturbationCurves, ConfidenceChange]:
        found = deletion_insertion(ctx.module, x[block], stacked[block], targets[block], steps=steps + 1,
                                   baseline=settings["trust_baseline"], batch_size=batch, head=ctx.head)
        return found, confidence_change(ctx.module, x[block], stacked[block], targets[block], batch_size=batch,
                                        head=ctx.head, scores=found.deletion[..., 0])  # clean images: not rerun

    # the trained model folded once, the CAM layer kept out, for every pass of it here: its maps, the other
    # class's, and the hundreds of perturbed images of deletion and insertion
    with audit_mode(ctx.module):
        trained = foldable_but_layer(ctx.module, layer, x[:1])
        with folded(trained):
            original = Saliency.joined(ctx.spread_batches(len(rows), lambda block: saliency(
                ctx.module, x[block], top[block], layer, target, ctx.head, _rows(known, block),
                {k: v for k, v in unavailable.items() if k in wanted}, methods=wanted, settings=used)))
            methods = list(original.maps)
            other_maps = Saliency.joined(ctx.spread_batches(len(rows), lambda block: saliency(
                ctx.module, x[block], other[block], layer, target, ctx.head, _rows(known_other, block),
                methods=methods, settings=used))).maps
            stacked = torch.stack([original.maps[m] for m in methods] + [random_maps(
                original.maps[methods[0]].shape, ctx.options.seed)], dim=1).to(x.device)
            targets = top[:, None].expand(-1, stacked.shape[1]).to(x.device)
            parts = ctx.spread_batches(len(rows), faithfulness)
    randomised = min(steps, len(parametrised_layers(ctx.module)))  # the cascade's steps: one layer at least each
    sparse = costly_steps(randomised, settings["trust_costly_steps"])
    costly = [m for m in methods if METHODS[m].many_passes and len(sparse) < randomised]
    labels, scores, step_maps, step_seconds, other_class = cascade(  # after the folded passes: unfolded copy
        ctx, x, top, layer, target, original, steps, used, trained=trained, other=other_maps,
        steps_for=lambda m: sparse if m in costly else range(randomised))
    curves = PerturbationCurves.joined([found for found, _ in parts])
    confidence = ConfidenceChange.joined([change for _, change in parts])
    if not ctx.is_main:  # a torchrun rank's share is in; rank 0 writes the section
        return Section(heading.name, heading.title)
    boxes = localisation(ctx, settings["boxes"], layer, target, wanted, used) if settings["boxes"] else {}
    results: dict[str, dict[str, Any]] = {}
    for column, method in enumerate(methods):
        curve = scores[method]["spearman"]
        results[method] = {
            "randomization": {"verdict": sanity_verdict(curve), "spearman": _finite(curve.mean(dim=1)),
                              "ssim": _finite(scores[method]["ssim"].mean(dim=1)), "steps": labels,
                              "computed_steps": sparse if method in costly else list(range(randomised))},
            "random_logit_spearman": other_class.get(method),
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
    recommended = recommend(results, baseline, {key: METHODS[key].name for key in results})
    seconds = time.perf_counter() - started
    columns = ["method", "sanity", "mean Spearman", "other class", "deletion AUC ↓", "insertion AUC ↑",
               "avg drop % ↓", "increase % ↑"] + (["pointing", "mass in box"] if boxes else [])
    table_rows = []
    for method, r in results.items():
        name = METHODS[method].name + (" *" if method in costly else "")
        row = [f"{name} (recommended)" if method == recommended.method else name, r["randomization"]["verdict"],
               round(float(np.nanmean(scores[method]["spearman"].mean(dim=1).numpy())), 3),
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
    sparse_words = ", ".join(str(i + 1) for i in sparse)
    table = Table(
        "trust-summary",
        f"How far to trust each saliency method, on {n} image{'s' if n != 1 else ''} and their top class. Sanity: "
        f"“pass” when the maps' Spearman rank correlation with the trained model's, averaged over {len(labels)} "
        f"cumulative randomisation steps from the head down, is below {SANITY_THRESHOLD} (the maps depend on "
        f"what the model learnt), else “warn”"
        + (f"; the methods marked * take many model passes per map and are randomised at step{'s' if len(sparse) > 1 else ''} "
           f"{sparse_words} only (--trust-costly-steps)" if costly else "")
        + f". Other class: correlation with the map of a random other class "
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
               f"randomisation step (grey: a step a method marked * skips). A method whose maps keep their shape "
               f"as the model loses its weights shows the image's edges, not the model.",
               cascade_picture(ctx, rows[0], original, labels, step_maps), "image/jpeg",
               alt="Maps of each method under cascading randomisation."),
    ]
    cost = {"images": n, "cascade_steps": len(labels), "costly_steps": len(sparse) if costly else len(labels),
            "perturbation_steps": steps + 1, "forward_images": curves.images_evaluated + n * stacked.shape[1],
            "step_seconds": [round(t, 3) for t in step_seconds], "seconds": round(seconds, 2)}
    text = ("No explanation method is right by construction, so this section tests each one on this model. The "
            "randomisation test (Adebayo et al., 2018) asks whether a map depends on the learnt weights at all: "
            "guided backprop and Guided Grad-CAM are known to keep their picture when the weights are destroyed, "
            "acting as edge detectors, while Grad-CAM changes. Deletion and insertion (Petsiuk et al., 2018) ask "
            "whether the pixels a map ranks highest are the ones the prediction needs. The metrics can disagree "
            "with each other and vary between images (see the ± spread): read them together. "
            f"{recommended.why} {cost_words(cost, sparse, costly, randomised, used)}")
    notes = [f"{METHODS[m].name} is not scored: {why}" for m, why in original.missing.items() if why]
    metrics = {"methods": results, "random_baseline": baseline, "baseline": curves.baseline,
               "recommended": recommended.as_metrics(), "images": [ctx.images.names[i] for i in rows],
               "threshold": SANITY_THRESHOLD, "cost": cost}
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics, notes=notes)


def cost_words(cost: dict[str, Any], sparse: list[int], costly: list[str], steps: int,
               settings: dict[str, Any]) -> str:
    """What the section cost, and what the costly methods would add at every step of the cascade, in model
    passes (the seconds, which vary from run to run, are in report.json's cost)."""
    text = (f"Cost: {cost['forward_images']} images through the model for deletion, insertion and confidence, "
            f"besides the maps; --trust-images, --trust-steps and --trust-costly-steps trade it against precision.")
    if not costly:
        return text
    names = ", ".join(METHODS[m].name for m in costly)
    counted = [m for m in costly if METHODS[m].family == "attribution"]
    per_step = sum(passes(m, settings) for m in counted) * cost["images"]
    extra = (f"; at every step, {', '.join(METHODS[m].name for m in counted)} would add "
             f"{per_step * (steps - len(sparse)):,} model passes to the {per_step:,} of each step they run at"
             if counted else "")
    return text + (f" {names} take many model passes per map, so they are randomised at {len(sparse)} of the "
                   f"{steps} steps{extra}.")
