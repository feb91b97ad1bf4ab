"""Performance section: what the model gets wrong across a labelled folder, and how far its confidence holds.

Everything is counted from the shared forward pass (ctx.forward), a chunk at a time, into running counts
(auditor.techniques.performance): no second pass over the images and nothing kept per image but the
example images of the most confused pairs, whose Grad-CAM maps (true class beside predicted class) come
from one batched `cam_maps` call.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PatchCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure as PlotFigure
from matplotlib.patches import Rectangle

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section, Table
from auditor.drawing import stack, titled, to_jpeg
from auditor.sections.cam import TILE_PX, class_title, colour_words, overlay_tile
from auditor.sections.predictions import FOLD_ROWS
from auditor.techniques.cam import CamNotApplicable, cam_maps
from auditor.techniques.performance import (
    CALIBRATION_TOLERANCE,
    CONFIDENT,
    ECE_BINS,
    Counts,
    Performance,
    label_scores,
    matrix_classes,
    mean_average_precision,
    pair_examples,
    summarise,
    worst_first,
)

CHUNK = 4096  # images counted at a time from the forward pass
LABEL_CHARS = 24  # class names on the matrix's axes are cut to this many characters (whole in the tables)
INTRODUCTION = ("How the model does over every image whose true class is known (ImageFolder subfolders named "
                "after the model's classes, or --labels-csv), counted from the one shared forward pass.")


def labels_of(ctx: AuditContext) -> list[int | None]:
    """Each image's true class index, or None: the one place this section reads labels from (subfolders or
    --labels-csv; an image with several true classes counts with its first, see several_labels_note)."""
    return list(ctx.images.labels)


def several_labels_note(ctx: AuditContext) -> str | None:
    several = sum(len(classes) > 1 for classes in getattr(ctx.images, "label_sets", []))
    if not several:
        return None
    return (f"{several} image{'s have' if several != 1 else ' has'} several true classes; this section scores one "
            f"prediction per image against the first of them (per-label scores for multi-label models are not yet "
            f"computed).")


def multi_label(ctx: AuditContext) -> bool:
    """Whether the model's head scores every label on its own (sigmoid): then top-1 confusions do not apply."""
    head = getattr(ctx.forward, "head", None)
    return getattr(head, "kind", "softmax") == "sigmoid"


def ranked(ctx: AuditContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's top-k classes and their probabilities, the predicted class first: the most probable,
    or for a binary head the class its threshold gives, whatever its probability."""
    forward = ctx.forward
    if forward.head.kind != "binary":
        return forward.top_indices, forward.top_probabilities
    predicted = torch.tensor([classes[0] for classes in forward.predicted])
    top = torch.stack([predicted, 1 - predicted], dim=1)[:, :forward.top_indices.shape[1]]
    return top, forward.probabilities.gather(1, top)


def count(ctx: AuditContext, labels: list[int | None]) -> Counts:
    """Running counts over the forward pass, CHUNK images at a time."""
    top, probabilities = ranked(ctx)
    counts = Counts(len(ctx.class_names), k=top.shape[1])
    for start in range(0, len(labels), CHUNK):
        stop = min(start + CHUNK, len(labels))
        counts.add(labels[start:stop], top[start:stop].numpy(), probabilities[start:stop].numpy(), start)
    return counts


def _short(name: str) -> str:
    """A class name for an axis: cut in the middle to LABEL_CHARS (names often differ at the end), with "$"
    kept literal (matplotlib would read mathtext)."""
    if len(name) > LABEL_CHARS:
        head = (LABEL_CHARS - 1) // 2
        name = name[:head].rstrip() + "…" + name[-(LABEL_CHARS - 1 - head):].lstrip()
    return name.replace("$", r"\$")


def _svg(figure: PlotFigure) -> bytes:
    """The figure as SVG, the same bytes for the same figure (fixed ids, no date)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "auditor", "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def confusion_plot(counts: np.ndarray, row_totals: np.ndarray, rows: list[str], columns: list[str]) -> bytes:
    """The matrix as SVG: colour the share of the row's images (the row's whole total), the count written in
    every non-empty cell."""
    share = counts / np.maximum(row_totals, 1)[:, None]
    n = max(len(rows), len(columns))
    cell = max(0.15, min(0.45, 6.0 / n))  # inches
    font = 8.0 if n <= 15 else 6.5 if n <= 30 else 5.5
    figure = PlotFigure(figsize=(cell * len(columns) + 2.8, cell * len(rows) + 2.2), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    scale = ScalarMappable(Normalize(0.0, 1.0), "Blues")
    axis.set_facecolor(scale.to_rgba(0.0))  # empty cells: only the non-empty ones are drawn, to keep the SVG small
    filled = list(zip(*np.nonzero(counts)))
    axis.add_collection(PatchCollection([Rectangle((c, r), 1, 1) for r, c in filled],
                                        facecolors=[scale.to_rgba(share[r, c]) for r, c in filled],
                                        edgecolors="white", linewidths=0.4))
    text_size = min(8.0, cell * 72 * 0.42)
    for r, c in filled:
        axis.text(c + 0.5, r + 0.5, str(int(counts[r, c])), ha="center", va="center", fontsize=text_size,
                  color="white" if share[r, c] > 0.55 else "#1d2327")
    axis.set_xticks(np.arange(len(columns) + 1), minor=True)
    axis.set_yticks(np.arange(len(rows) + 1), minor=True)
    axis.grid(which="minor", color="white", linewidth=0.4)
    axis.set_xticks(np.arange(len(columns)) + 0.5, [_short(c) for c in columns], rotation=90, fontsize=font)
    axis.set_yticks(np.arange(len(rows)) + 0.5, [_short(r) for r in rows], fontsize=font)
    axis.set_xlim(0, len(columns))
    axis.set_ylim(len(rows), 0)
    axis.set_xlabel("predicted class", fontsize=font + 1)
    axis.set_ylabel("true class", fontsize=font + 1)
    axis.tick_params(which="both", length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    bar = figure.colorbar(scale, ax=axis, fraction=0.05, shrink=min(1.0, 0.4 + 0.05 * n))
    bar.set_label("share of the true class's images", fontsize=font)
    bar.ax.tick_params(labelsize=font)
    return _svg(figure)


def reliability_plot(result: Performance) -> bytes:
    """Accuracy against mean confidence per bin (bars, with the diagonal), and the images per bin below."""
    figure = PlotFigure(figsize=(5.6, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = 1.0 / len(result.bins)
    lows = np.array([b.low for b in result.bins])
    filled = [b for b in result.bins if b.count]
    top.bar([b.low for b in filled], [b.accuracy for b in filled], width=width, align="edge", color="#8fb1e3",
            edgecolor="#2458a6", linewidth=0.6, label="accuracy in the bin")
    top.scatter([b.confidence for b in filled], [b.confidence for b in filled], s=14, color="#b3261e", zorder=3,
                label="mean confidence in the bin")
    for b in filled:
        top.plot([b.confidence, b.confidence], [b.accuracy, b.confidence], color="#b3261e", linewidth=0.8)
    top.plot([0, 1], [0, 1], linestyle="--", color="#5f6b73", linewidth=0.8, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy", fontsize=8)
    top.set_title(f"ECE {result.ece:.3f} · mean confidence {result.mean_confidence:.3f} · accuracy "
                  f"{result.accuracy:.3f}", fontsize=9)
    top.legend(fontsize=7, loc="upper left")
    bottom.bar(lows, [b.count for b in result.bins], width=width, align="edge", color="#c4ccd3",
               edgecolor="#5f6b73", linewidth=0.6)
    bottom.set_ylabel("images", fontsize=8)
    bottom.set_xlabel("top-1 confidence", fontsize=8)
    bottom.set_xlim(0, 1)
    for axis in (top, bottom):
        axis.tick_params(labelsize=7)
    return _svg(figure)


def matrix_figure(ctx: AuditContext, result: Performance, limit: int) -> tuple[Figure, dict[str, Any]]:
    names = ctx.class_names
    full = result.confusion
    chosen = matrix_classes(full, limit)
    with_images = [i for i in chosen if full[i].sum()]  # rows: the true classes with images
    counts = full[np.ix_(with_images, chosen)]
    totals = full[with_images].sum(axis=1)
    rule = None
    if len(chosen) < len(full):
        rule = (f"the {limit} of {len(full)} classes with the most errors (images of the class predicted as "
                f"another, plus images of other classes predicted as it), as rows and columns alike")
    caption = (f"Confusion matrix over the {result.labelled} labelled images: rows are the true classes "
               f"(those with images), columns the predicted classes. The colour is the share of the true class's "
               f"images (each row normalised by its total), the number the count of images; an empty cell has "
               f"none.")
    if rule:
        caption += (f" Shown: {rule}; each row is still normalised by all its images, so a row's shares need not "
                    f"add up to 1. The whole matrix is in report.json (confusion_matrix).")
    elif len(chosen) > len(with_images):
        caption += " Columns also hold the classes predicted for images of other classes."
    data = confusion_plot(counts, totals, [names[result.classes[i]] for i in with_images],
                          [names[result.classes[i]] for i in chosen])
    figure = Figure("performance-confusion", caption, data, "image/svg+xml",
                    alt="Confusion matrix, normalised by row, with counts.")
    return figure, {"classes": [names[result.classes[i]] for i in chosen], "rule": rule}


def calibration_text(result: Performance) -> str:
    gap = result.mean_confidence - result.accuracy
    numbers = (f"mean top-1 confidence {result.mean_confidence:.3f} against accuracy {result.accuracy:.3f}, "
               f"expected calibration error (ECE) {result.ece:.3f}")
    if result.calibration == "over-confident":
        words = f"The model is over-confident: its confidence exceeds its accuracy by {gap:.3f} ({numbers})."
    elif result.calibration == "under-confident":
        words = f"The model is under-confident: its accuracy exceeds its confidence by {-gap:.3f} ({numbers})."
    else:
        words = f"The model's confidence matches its accuracy within {CALIBRATION_TOLERANCE} ({numbers})."
    return (f"{words} ECE: {ECE_BINS} equal-width bins of top-1 confidence, each bin's |accuracy − mean confidence| "
            f"weighted by its share of the images (Guo et al., 2017); with few images per bin it is a rough "
            f"estimate.")


def example_figures(ctx: AuditContext, result: Performance, settings: dict[str, Any],
                    labels: list[int | None]) -> tuple[list[Figure], list[dict[str, Any]], str | None]:
    """For the first pairs, their images with the Grad-CAM of the true class beside the predicted class's,
    all from one batched cam_maps call."""
    pairs = [(t, p) for t, p, _ in result.most_confused[:settings["confused_examples"]]]
    if not pairs:
        return [], [], None
    top, probabilities = ranked(ctx)
    chosen = pair_examples(labels, top[:, 0].numpy(), probabilities[:, 0].numpy(), pairs, settings["confused_images"])
    images = [i for found in chosen for i in found]
    targets = torch.tensor([pair for pair, found in zip(pairs, chosen) for _ in found], dtype=torch.long)
    cam = getattr(ctx.shared, "cam", None)  # the CAM section's layer and target, when it ran first
    layer = getattr(cam, "layer", None) or ctx.options.settings.get("cam_layer") or None
    target = getattr(cam, "target", None) or ctx.options.settings.get("cam_target") or "logit"
    names = ctx.class_names
    entries = [{"true": names[t], "predicted": names[p], "images": [ctx.images.names[i] for i in found]}
               for (t, p), found in zip(pairs, chosen)]
    size = max(1, ctx.options.batch_size)  # one batched call when they fit in --batch-size (the default does)
    try:
        parts = [cam_maps(ctx.module, ctx.inputs(images[i:i + size]), targets[i:i + size].to(ctx.device), layer,
                          target=target, methods=("grad-cam",), head=ctx.head) for i in range(0, len(images), size)]
    except CamNotApplicable as error:
        return [], entries, f"The confused pairs' examples have no Grad-CAM maps: {error}."
    maps = parts[0]
    grad_cam = torch.cat([part.maps["grad-cam"].cpu() for part in parts])
    figures, row = [], 0
    for number, ((true, wrong), found) in enumerate(zip(pairs, chosen), start=1):
        rows = []
        for index in found:
            tiles = [titled(ctx.photo(index, TILE_PX), Path(ctx.images.names[index]).name, size=11)]
            tiles += [overlay_tile(ctx, index, grad_cam[row, column], f"{kind}: {class_title(ctx, index, c)}")
                      for column, (kind, c) in enumerate((("true", true), ("predicted", wrong)))]
            rows.append(stack(tiles, vertical=False, gap=4))
            row += 1
        caption = (f"Confused pair {number}: images of {names[true]} predicted as {names[wrong]} "
                   f"({len(found)} of {result.most_confused[number - 1][2]}, the most confident mistakes first). "
                   f"Each image, then the Grad-CAM of the true class (✓) and of the predicted class, with their "
                   f"probabilities, at layer {maps.layer.name}; {colour_words(ctx.options.colormap)}, each map "
                   f"scaled to its own maximum. Where the two maps cover the same region, the "
                   f"model sees the object and weighs it wrongly; where they differ, the predicted class was drawn "
                   f"from somewhere else.")
        figures.append(Figure(f"performance-pair-{number}", caption, to_jpeg(stack(rows, gap=8)),
                              "image/jpeg", alt=f"Grad-CAM of {names[true]} and {names[wrong]} on images of "
                                                f"{names[true]} predicted as {names[wrong]}."))
    return figures, entries, None


def mistakes_table(mistakes: list[dict[str, Any]], total: int) -> Table:
    shown = f", the {len(mistakes)} most confident shown" if len(mistakes) < total else ""
    return Table("performance-confident-mistakes",
                 f"Images whose label disagrees with a confident prediction (top-1 probability ≥ {CONFIDENT}): "
                 f"{total} in all{shown}, the most confident first. Each is a wrong label or a confident mistake.",
                 ["image", "label", "predicted", "probability"],
                 [[m["image"], m["true"], m["predicted"], round(m["confidence"], 3)] for m in mistakes],
                 folded=len(mistakes) > FOLD_ROWS)


def unmatched_note(ctx: AuditContext) -> str | None:
    """Labels that name no class of the model: their images are not counted."""
    folders = Counter(name for name, label in zip(ctx.images.label_names, ctx.images.labels)
                      if name is not None and label is None)
    if not folders:
        return None
    listed = ", ".join(f"“{name}” ({n} image{'s' if n != 1 else ''})" for name, n in sorted(folders.items()))
    return (f"Labels (folder names or --labels-csv classes) that match no class name of the model, whose images "
            f"are not counted here: {listed}. Name a label after a class (or its index) to count it.")


def no_labels(ctx: AuditContext) -> str:
    """Why no image has a true class, in words."""
    why = ("no image has a known class: labels come from ImageFolder subfolders named after the model's classes "
           "(e.g. photos/tabby/1.jpg) or from --labels-csv")
    given = sorted({n for n in ctx.images.label_names if n is not None})
    return why + (f"; the labels {', '.join(repr(n) for n in given)} match no class name" if given else "")


def not_applicable(heading: Heading, why: str) -> Section:
    return Section(heading.name, heading.title, text=INTRODUCTION, notes=[f"This section does not apply: {why}."],
                   metrics={"not_applicable": why})


def class_table(result: Performance, names: list[str]) -> Table:
    """Per-class precision, recall, F1 and support, worst first, with the class each is most often taken for."""
    row_of = {c: i for i, c in enumerate(result.classes)}
    rows = []
    for s in worst_first(result.per_class):
        others = result.confusion[row_of[s.index]].copy()
        others[row_of[s.index]] = 0
        instead = f"{names[result.classes[int(others.argmax())]]} ({int(others.max())})" if others.max() else ""
        rows.append([names[s.index], round(s.precision, 3), round(s.recall, 3), round(s.f1, 3), s.support, instead])
    return Table("performance-per-class", f"Precision, recall, F1 and support (images) of each of the {len(rows)} "
                                          f"true classes, worst first (lowest F1, then lowest recall); the last "
                                          f"column is the class its images are most often predicted as, with the "
                                          f"count.",
                 ["class", "precision", "recall", "F1", "images", "most often predicted instead"], rows,
                 folded=len(rows) > FOLD_ROWS)


def confused_table(result: Performance, names: list[str], limit: int) -> Table:
    support = {s.index: s.support for s in result.per_class}
    pairs = result.most_confused[:limit]
    return Table("performance-confused", f"The {len(pairs)} most confused pairs (true → predicted), most images "
                                         f"first, of {len(result.most_confused)} with any.",
                 ["true class", "predicted class", "images", "share of the true class"],
                 [[names[t], names[p], n, round(n / support[t], 3)] for t, p, n in pairs],
                 folded=len(pairs) > FOLD_ROWS)


def predicted_only_note(result: Performance, names: list[str]) -> str | None:
    """Classes predicted for the images without images of their own: columns of the matrix, not rows."""
    having = {s.index for s in result.per_class}
    others = [names[c] for c in result.classes if c not in having]
    if not others:
        return None
    listed = ", ".join(others[:10]) + (", …" if len(others) > 10 else "")
    if len(others) == 1:
        return f"1 class predicted for these images has no images of its own, a column of the matrix only: {listed}."
    return f"{len(others)} classes predicted for these images have no images of their own, columns of the matrix " \
           f"only: {listed}."


def summary_text(result: Performance, total: int) -> str:
    counted = (f"all {result.labelled} images" if not result.unlabelled
               else f"the {result.labelled} of {total} images with a known class")
    return (f"{INTRODUCTION}\n\nOver {counted}, top-1 accuracy is {result.accuracy:.1%} and top-{result.k} "
            f"accuracy {result.top_k_accuracy:.1%}; balanced accuracy (the mean of the per-class recalls) is "
            f"{result.balanced_accuracy:.1%}, macro F1 {result.macro_f1:.3f} and weighted F1 (by support) "
            f"{result.weighted_f1:.3f}, over the {len(result.per_class)} classes that have images.\n\n"
            f"{calibration_text(result)}")


def label_section(heading: Heading, ctx: AuditContext, labels: list[int | None]) -> Section:
    """A multi-label head: per-label precision, recall, F1 and average precision, and their means."""
    rows = [i for i, label in enumerate(labels) if label is not None]
    forward, names, threshold = ctx.forward, ctx.class_names, ctx.head.threshold
    truth = [ctx.images.label_sets[i] if ctx.images.label_sets[i] else (labels[i],) for i in rows]
    scores = label_scores(forward.probabilities[rows].numpy(), [forward.predicted[i] for i in rows], truth)
    present = [s for s in scores if s.support]
    mean_ap, macro_f1 = mean_average_precision(scores), float(np.mean([s.f1 for s in present]))
    exact = float(np.mean([set(forward.predicted[i]) == set(t) for i, t in zip(rows, truth)]))
    table_rows = [[names[s.index], round(s.precision, 3), round(s.recall, 3), round(s.f1, 3),
                   round(s.average_precision, 3), s.support, s.predicted]
                  for s in sorted(present, key=lambda s: (s.f1, s.average_precision, -s.support, s.index))]
    table = Table("performance-per-label",
                  f"Per label, over the {len(rows)} labelled images, worst first (lowest F1): precision, recall and "
                  f"F1 of the labels predicted at probability {threshold:g} or more, average precision over every "
                  f"image's probability of the label, the images that have it and those predicted to.",
                  ["label", "precision", "recall", "F1", "average precision", "images", "predicted"], table_rows,
                  folded=len(table_rows) > FOLD_ROWS)
    text = (f"The model's head is a sigmoid per label (multi-label), so each label is scored on its own: over the "
            f"{len(rows)} images with known labels, mean average precision is {mean_ap:.3f} and macro F1 "
            f"{macro_f1:.3f} over the {len(present)} labels that some image has; {exact:.1%} of the images are "
            f"predicted with exactly their labels. A confusion matrix and a reliability diagram of the top class "
            f"do not apply to independent labels.")
    metrics = {"labelled_images": len(rows), "threshold": threshold, "mean_average_precision": mean_ap,
               "macro_f1": macro_f1, "exact_match": exact,
               "per_label": [{"class": names[s.index], "precision": s.precision, "recall": s.recall, "f1": s.f1,
                              "average_precision": s.average_precision, "support": s.support,
                              "predicted": s.predicted} for s in present]}
    return Section(heading.name, heading.title, text=text, blocks=[table], metrics=metrics)


def performance_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any]) -> Section:
    labels = labels_of(ctx)
    if all(label is None for label in labels):
        return not_applicable(heading, no_labels(ctx))
    if multi_label(ctx):
        return label_section(heading, ctx, labels)
    counts = count(ctx, labels)
    result = summarise(counts)
    names = ctx.class_names
    matrix, shown = matrix_figure(ctx, result, settings["matrix_classes"])
    blocks: list[Any] = [
        matrix,
        class_table(result, names),
        Figure("performance-reliability", f"Reliability diagram over the {result.labelled} labelled images: the "
                                          f"top-1 confidence in {ECE_BINS} equal-width bins; bars give the accuracy "
                                          f"of each bin's images, red dots their mean confidence (a red line down "
                                          f"to the bar: over-confident; up: under-confident). Below: the images "
                                          f"per bin.",
               reliability_plot(result), "image/svg+xml", alt="Reliability diagram."),
    ]
    if result.most_confused:
        blocks.append(confused_table(result, names, settings["confused_pairs"]))
    examples, example_entries, example_note = example_figures(ctx, result, settings, labels)
    blocks += examples
    mistakes = [{"image": ctx.images.names[i], "true": names[t], "predicted": names[p], "confidence": c}
                for i, t, p, c in counts.most_confident_mistakes()]
    if mistakes:
        blocks.append(mistakes_table(mistakes, counts.confident_mistakes))
    notes = [n for n in (unmatched_note(ctx), several_labels_note(ctx), predicted_only_note(result, names),
                         example_note) if n]
    metrics: dict[str, Any] = {
        "labelled_images": result.labelled,
        "unlabelled_images": result.unlabelled,
        "accuracy": result.accuracy,
        "top_k": result.k,
        "top_k_accuracy": result.top_k_accuracy,
        "macro_f1": result.macro_f1,
        "weighted_f1": result.weighted_f1,
        "balanced_accuracy": result.balanced_accuracy,
        "mean_confidence": result.mean_confidence,
        "calibration": result.calibration,
        "calibration_tolerance": CALIBRATION_TOLERANCE,
        "ece": result.ece,
        "ece_bins": [{"low": b.low, "high": b.high, "count": b.count, "confidence": b.confidence,
                      "accuracy": b.accuracy} for b in result.bins],
        "confusion_matrix": {"classes": [names[c] for c in result.classes], "counts": result.confusion.tolist()},
        "matrix_shown": shown,
        "per_class": [{"class": names[s.index], "precision": s.precision, "recall": s.recall, "f1": s.f1,
                       "support": s.support, "predicted": s.predicted} for s in result.per_class],
        "most_confused": [{"true": names[t], "predicted": names[p], "count": n}
                          for t, p, n in result.most_confused[:settings["confused_pairs"]]],
        "examples": example_entries,
        "confident_mistakes": {"threshold": CONFIDENT, "count": counts.confident_mistakes, "images": mistakes},
    }
    return Section(heading.name, heading.title, text=summary_text(result, len(labels)), blocks=blocks,
                   metrics=metrics, notes=notes)
