"""CAM section: the CAM family's galleries per image, per class and for mistakes, and Guided Grad-CAM.

The methods of --cam-methods (and Grad-CAM, which the per-class, mistakes and Guided Grad-CAM figures
draw) come from one `cam_maps` call per shown image (`gallery_maps`: an image is the unit of work spread
over torchrun's ranks): one forward pass and one batched backward for all its classes (top-k, true, chosen
and the per-class gallery's), so nothing is computed twice across the methods and the galleries. The first
image's call also computes the other methods of --cam-showcase (by default all, Score-CAM's forward pass
per channel included). The methods and their names are the CAM family of the one table (auditor.methods).
Guided Grad-CAM reuses the reconstructions section's guided backprop (ctx.shared.gradients) when it ran
first; the section publishes its top-class maps (ctx.shared.cam) and the guided backprop it computed itself,
for the trust section.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section, Table
from auditor.drawing import colorbar, overlay, stack, titled, to_jpeg
from auditor.methods import METHODS
from auditor.option_checks import resolve_classes
from auditor.sections.kept_maps import kept_maps
from auditor.sections.reconstructions import gradient_picture
from auditor.shared import CamShared, GradientShared
from auditor.techniques.cam import (
    CamNotApplicable,
    CamResult,
    cam_maps,
    guided_grad_cam_product,
)
from auditor.techniques.cam_layers import automatic_layer, resolve_layer
from auditor.techniques.reconstructions import guided_backprop, rectifier_warnings

TILE_PX = 160
GALLERY_CLASSES = 6  # classes in the per-class gallery when none are chosen
WIDE_AFTER = 4  # an image's figure with more methods than this puts them in columns, its classes in rows
INTRODUCTION = ("Class activation maps show which regions of an image raise a class's score. CAM (Zhou et al., 2016) "
                "weights the last feature maps by the classifier's weights for the class and needs a global-average-"
                "pooling head; Grad-CAM (Selvaraju et al., 2017) weights them by the class score's spatially "
                "averaged gradients and keeps the positive part; Grad-CAM++ (Chattopadhay et al., 2018) uses "
                "higher-order weights that separate several instances of a class better. Their successors: "
                "Score-CAM (Wang et al., 2020) weights each feature map by the score of the image masked with it, "
                "with no gradient; LayerCAM (Jiang et al., 2021) and HiResCAM (Draelos and Carin, 2020) weight each "
                "position by its own gradient rather than the average; XGrad-CAM (Fu et al., 2020) normalises the "
                "gradient by the feature map's sum; Eigen-CAM (Muhammad and Yeasin, 2020) is the feature maps' first "
                "principal component, the same for every class.")


@dataclass(frozen=True)
class Plan:
    """Which classes each shown image is explained for, as one [N, K] target tensor."""

    shown: list[int]  # image indices
    per_image: list[list[int]]  # classes of each image's own gallery: top-k, true, chosen
    gallery: list[int]  # classes of the per-class gallery
    targets: torch.Tensor  # [N, K]: per_image + gallery classes, padded by repeating

    def column(self, row: int, class_index: int) -> int:
        return self.targets[row].tolist().index(class_index)


def plan(ctx: AuditContext, top_k: int, chosen: list[int]) -> Plan:
    shown = ctx.gallery_indices()
    top = ctx.forward.top_indices
    per_image = []
    for i in shown:
        classes = top[i, :top_k].tolist()
        label = ctx.images.labels[i]
        per_image.append(list(dict.fromkeys(classes + ([label] if label is not None else []) + chosen)))
    gallery = chosen or list(dict.fromkeys(int(top[i, 0]) for i in shown))[:GALLERY_CLASSES]
    rows = [list(dict.fromkeys(classes + gallery)) for classes in per_image]
    width = max(len(r) for r in rows)
    targets = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows], dtype=torch.long)
    return Plan(shown, per_image, gallery, targets)


def overlay_tile(ctx: AuditContext, image_index: int, heat: torch.Tensor, title: str) -> Image.Image:
    photo = ctx.photo(image_index, TILE_PX)
    small = heat.float().cpu().numpy()
    return titled(overlay(photo, small, cmap=ctx.options.colormap), title, size=11)


def scale_bar(ctx: AuditContext) -> Image.Image:
    return colorbar(ctx.options.colormap, 0.0, 1.0, 300, "relative importance (each map scaled to its own maximum)")


def colour_words(cmap: str) -> str:
    """How a caption reads the --colormap: jet's colours in words, any other map's name and its colour bar."""
    if cmap == "jet":
        return "jet colours, red where the class score rises most, blue least"
    return f"{cmap} colours, from low to high along the colour bar"


def class_title(ctx: AuditContext, image_index: int, class_index: int) -> str:
    probability = float(ctx.forward.probabilities[image_index, class_index])
    truth = " ✓" if ctx.images.labels[image_index] == class_index else ""
    return f"{ctx.class_names[class_index]} {probability:.2f}{truth}"


def image_figure(ctx: AuditContext, maps: dict[str, torch.Tensor], p: Plan, row: int, layer: str,
                 target_text: str) -> Figure:
    """One image: a row per method (`maps`: method key -> [K, H, W], the plan's columns), a column per class of
    interest."""
    index = p.shown[row]
    name = ctx.images.names[index]
    classes = p.per_image[row]
    wide = len(maps) > WIDE_AFTER  # many methods: one column each, so the figure stays within a page
    lines = []
    for method, found in maps.items():
        tiles = [overlay_tile(ctx, index, found[p.column(row, c)],
                              METHODS[method].name if wide else class_title(ctx, index, c)) for c in classes]
        lines.append(tiles if wide else [titled(stack(tiles, vertical=False, gap=4), METHODS[method].name, size=13)])
    if wide:  # rows: classes; columns: methods
        lines = [[titled(stack([line[k] for line in lines], vertical=False, gap=4), class_title(ctx, index, c),
                         size=13)] for k, c in enumerate(classes)]
    photo = titled(ctx.photo(index, TILE_PX), name, size=11)
    grid = stack([line[0] for line in lines], gap=8)
    picture = stack([stack([photo, grid], vertical=False, gap=12), scale_bar(ctx)], gap=8)
    methods = ", ".join(METHODS[m].name for m in maps)
    true_text = " and its true class (✓)" if ctx.images.labels[index] is not None else ""
    layout = ("columns) for its {count} classes of interest (rows" if wide else
              "rows) for its {count} classes of interest (columns").format(count=len(classes))
    caption = (f"Where {ctx.model.name} looks in {name}: {methods} maps ({layout}: the most probable "
               f"classes{true_text}, with the predicted probability), at "
               f"layer {layer}, {target_text}. Over the image as the model saw it, "
               f"{colour_words(ctx.options.colormap)}; each map is scaled to its own maximum.")
    return Figure(f"cam-{name}", caption, to_jpeg(picture), "image/jpeg", alt=f"Class activation maps for {name}.")


def gallery_maps(ctx: AuditContext, batch: torch.Tensor, targets: torch.Tensor, layer: str | None, target: str,
                 methods: list[str], showcase: Sequence[str]) -> tuple[CamResult, dict[str, torch.Tensor]]:
    """cam_maps of every shown image, each image alone (its K classes in one backward pass), spread over
    torchrun's ranks; the layer is chosen once, on all the images. The first image's call also computes the
    methods of `showcase` that `methods` lacks (Score-CAM: one pass of masked inputs serves every class):
    their maps [K, H, W] come back beside the CamResult of `methods`. Everything is on the CPU."""
    chosen = automatic_layer(ctx.module, batch) if layer is None else resolve_layer(ctx.module, layer)
    extra = [m for m in METHODS if m in showcase and m not in methods]

    def one(i: int) -> dict[str, Any]:
        found = cam_maps(ctx.module, batch[i:i + 1], targets[i:i + 1], chosen.name, target=target,
                         methods=methods + extra if i == 0 else methods, head=ctx.head,
                         batch_size=ctx.options.batch_size)
        # all but the TargetLayer, whose module stays out of the exchange between ranks
        return {"formed": found.formed, "target": found.target, "logits": found.logits, "raw": found.raw,
                "maps": found.maps, "unavailable": found.unavailable}

    parts = ctx.spread(len(batch), one)  # CamNotApplicable, raised on every rank, is the caller's to say
    first = parts[0]
    common = [key for key in first["maps"] if key not in extra]
    result = CamResult(chosen, first["formed"], first["target"], targets.cpu(),
                       torch.cat([part["logits"] for part in parts]),
                       {key: torch.cat([part["raw"][key] for part in parts]) for key in common},
                       {key: torch.cat([part["maps"][key] for part in parts]) for key in common},
                       {key: why for part in parts for key, why in part["unavailable"].items()})
    return result, {key: first["maps"][key][0] for key in extra if key in first["maps"]}


def class_figure(ctx: AuditContext, result: CamResult, p: Plan) -> Figure:
    """The per-class gallery: each class's Grad-CAM on every shown image."""
    maps = result.maps["grad-cam"]
    rows = []
    for class_index in p.gallery:
        tiles = [overlay_tile(ctx, index, maps[row, p.column(row, class_index)],
                              f"{ctx.images.names[index]} {float(ctx.forward.probabilities[index, class_index]):.2f}")
                 for row, index in enumerate(p.shown)]
        rows.append(titled(stack(tiles, vertical=False, gap=4), ctx.class_names[class_index], size=13))
    picture = stack([*rows, scale_bar(ctx)], gap=8)
    caption = ("The same class across images: Grad-CAM of each class (rows) on each image (columns, with the "
               "class's probability). A map that lights up on unrelated images shows what the class detector "
               "responds to in general, not only where the class is.")
    return Figure("cam-per-class", caption, to_jpeg(picture), "image/jpeg", alt="Grad-CAM per class across images.")


def mistakes_figure(ctx: AuditContext, result: CamResult, p: Plan, wrong: list[int]) -> Figure:
    """Misclassified images: Grad-CAM of the predicted class beside that of the true class."""
    maps = result.maps["grad-cam"]
    rows = []
    for row in wrong:
        index = p.shown[row]
        predicted, true = (ctx.forward.predicted[index] or [int(ctx.forward.top_indices[index, 0])])[0], \
            ctx.images.labels[index]
        photo = titled(ctx.photo(index, TILE_PX),
                       ctx.images.names[index], size=11)
        tiles = [overlay_tile(ctx, index, maps[row, p.column(row, c)], f"{kind}: {class_title(ctx, index, c)}")
                 for kind, c in (("predicted", predicted), ("true", true))]
        rows.append(stack([photo, *tiles], vertical=False, gap=4))
    caption = ("Misclassified images: the photo, the Grad-CAM of the predicted (wrong) class and that of the true "
               "class. Where the two maps cover different regions, the model was drawn to something other than "
               "the labelled object.")
    return Figure("cam-misclassified", caption, to_jpeg(stack([*rows, scale_bar(ctx)], gap=8)), "image/jpeg",
                  alt="Grad-CAM of predicted and true classes for misclassified images.")


def guided_figure(ctx: AuditContext, result: CamResult, p: Plan, batch: torch.Tensor) -> tuple[Figure, str | None]:
    """Guided Grad-CAM (guided backprop times the upsampled Grad-CAM map) next to Grad-CAM, for the top class,
    and a note when the model has no rectifier to guide (GELU in ViT, Swin, ConvNeXt): then the figure shows
    the plain gradient, says so, and is not passed on as guided backprop."""
    top = torch.tensor([p.per_image[row][0] for row in range(len(p.shown))], device=batch.device)
    shared = ctx.shared.gradients.get("guided-backprop")  # the reconstructions section's, for the same top classes
    guided = shared.rows(p.shown) if shared is not None else None
    blind = None
    if guided is None:
        with rectifier_warnings() as seen:
            guided = guided_backprop(ctx.module, batch, top).cpu()
        blind = next(iter(seen.plain), None)
        if blind is None:
            ctx.shared.gradients["guided-backprop"] = GradientShared(p.shown, guided)
    name = METHODS["gradient" if blind else "guided-backprop"].words
    grad_cam = torch.stack([result.maps["grad-cam"][row, p.column(row, int(top[row]))]
                            for row in range(len(top))]).cpu()
    products = guided_grad_cam_product(guided, grad_cam)
    rows = []
    for row, index in enumerate(p.shown):
        photo = ctx.photo(index, TILE_PX)
        pictures = [photo, overlay(photo, grad_cam[row].numpy(), cmap=ctx.options.colormap),
                    gradient_picture(guided[row], TILE_PX), gradient_picture(products[row], TILE_PX)]
        titles = [ctx.images.names[index], f"Grad-CAM: {class_title(ctx, index, int(top[row]))}", name,
                  f"Grad-CAM × {name}"]
        rows.append(stack([titled(pic, t, size=11) for pic, t in zip(pictures, titles)], vertical=False, gap=4))
    caption = (f"Guided Grad-CAM for the top class: the Grad-CAM map (second column) multiplied pixel by pixel with "
               f"{name} (third), which keeps the fine detail of the gradient only where Grad-CAM says the class "
               f"evidence is (fourth). Grey is zero.")
    figure = Figure("guided-grad-cam", caption, to_jpeg(stack(rows, gap=8)), "image/jpeg",
                    alt="Guided Grad-CAM for the top class of each image.")
    note = f"Guided Grad-CAM multiplies by the plain input gradient here, not guided backprop ({blind})." \
        if blind else None
    return figure, note


def peak(heat: torch.Tensor) -> list[float]:
    """Where a map is highest, as (x, y) fractions of the width and height: comparable across input sizes."""
    h, w = heat.shape
    flat = int(heat.argmax())
    return [round((flat % w + 0.5) / w, 4), round((flat // w + 0.5) / h, 4)]


def cam_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    chosen = resolve_classes(settings["cam_classes"], ctx.class_names)
    p = plan(ctx, settings["cam_top_k"], chosen)
    batch = ctx.inputs(p.shown)
    layer = settings["cam_layer"] or None
    chosen_methods = list(settings["cam_methods"])
    try:  # Grad-CAM too: the per-class, mistakes and Guided Grad-CAM figures draw it
        result, showcase = gallery_maps(ctx, batch, p.targets.to(ctx.device), layer, settings["cam_target"],
                                        list(dict.fromkeys([*chosen_methods, "grad-cam"])), settings["cam_showcase"])
    except CamNotApplicable as error:  # no spatial layer the scores depend on: say why instead of failing
        return Section(heading.name, heading.title, text=INTRODUCTION,
                       notes=[f"The CAM family does not apply to {ctx.model.name}: {error}."],
                       metrics={"not_applicable": str(error)})
    if not ctx.is_main:  # a torchrun rank's share of the gallery is in; rank 0 draws and writes the section
        return Section(heading.name, heading.title)
    shown = [m for m in chosen_methods if m in result.maps]
    target_text = ("differentiating the class logit" if result.target == "logit"
                   else f"differentiating the {'sigmoid' if ctx.head.independent else 'softmax'} probability")
    every = {m: showcase[m] if m in showcase else result.maps[m][0] for m in METHODS
             if m in showcase or m in result.maps}
    blocks: list[Any] = [image_figure(ctx, every if row == 0 else {m: result.maps[m][row] for m in shown}, p, row,
                                      result.layer.name, target_text)
                         for row in ctx.progress.each(range(len(p.shown)), "images")]
    blocks.append(class_figure(ctx, result, p))
    wrong = [row for row, index in enumerate(p.shown)
             if ctx.images.correct(index, ctx.forward.predicted[index]) is False]
    if wrong:
        blocks.append(mistakes_figure(ctx, result, p, wrong))
    guided, guided_note = guided_figure(ctx, result, p, batch)
    blocks.append(guided)
    top = [p.column(row, p.per_image[row][0]) for row in range(len(p.shown))]
    ctx.shared.cam = CamShared(p.shown, result.layer.name, result.target,
                               {m: torch.stack([maps[row, column] for row, column in enumerate(top)]).cpu()
                                for m, maps in result.maps.items()}, result.unavailable)
    rows, per_image = [], []
    for row, index in enumerate(p.shown):
        entries = []
        for c in p.per_image[row]:
            column = p.column(row, c)
            peaks = {m: peak(maps[column]) for m, maps in
                     (every.items() if row == 0 else ((m, result.maps[m][row]) for m in shown))}
            entries.append({"class": ctx.class_names[c], "index": c,
                            "probability": float(ctx.forward.probabilities[index, c]), "peak_xy": peaks})
            rows.append([ctx.images.names[index], ctx.class_names[c], float(ctx.forward.probabilities[index, c]),
                         *(", ".join(f"{v:.2f}" for v in peaks[m]) for m in shown)])
        per_image.append({"image": ctx.images.names[index], "classes": entries})
    blocks.append(Table("cam-peaks", "Where each map peaks: (x, y) as fractions of the image width and height, "
                                     "from the top-left corner, per image and class of interest.",
                        ["image", "class", "probability", *(METHODS[m].name for m in shown)], rows))
    text = (f"{INTRODUCTION} All maps here come from layer {result.layer.name} ({result.layer.reason}); "
            f"{result.formed}; {target_text}. A map on the object supports the prediction; a map on the background "
            f"or on another object is a warning, even when the class is right.")
    notes = [f"{METHODS[m].name} does not apply: {why}." for m, why in result.unavailable.items()]
    notes += [f"{METHODS[m].name} is drawn on the first image only: it runs a forward pass per channel of "
              f"{result.layer.name} for each image; --cam-methods {m} draws it on every image."
              for m in showcase if METHODS[m].many_passes]
    notes += [guided_note] if guided_note else []
    metrics = {"layer": result.layer.name, "layer_reason": result.layer.reason, "formed": result.formed,
               "target": result.target, "methods": shown, "first_image_methods": list(every),
               "unavailable": result.unavailable, "cam_unavailable": result.cam_unavailable,
               "gallery_classes": [ctx.class_names[c] for c in p.gallery], "images": per_image}
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics, notes=notes,
                   arrays=kept_maps(ctx, result.raw, p.shown, top))  # maps.safetensors
