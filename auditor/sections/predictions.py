"""Predictions: the gallery's images with their top-k classes, and every image in a table with accuracy."""

from __future__ import annotations

from collections.abc import Sequence

from auditor.context import AuditContext
from auditor.document import Bar, Card, Cards, Heading, Section, Table
from auditor.drawing import to_jpeg

FOLD_ROWS = 50  # a longer per-image table is folded in the HTML and left out of the PDF (about a page)


def accuracy(ctx: AuditContext, indices: Sequence[int]) -> dict[str, float | int] | None:
    """Top-1 accuracy (the predicted classes are exactly the true ones, ImageSet.correct: the top class, or
    the labels a multi-label head predicts) and top-k accuracy (the true class among the k most probable)
    over the labelled images among `indices`; None when none has a known class."""
    images, forward = ctx.images, ctx.forward
    known = [i for i in indices if images.labels[i] is not None]
    if not known:
        return None
    top1 = sum(bool(images.correct(i, forward.predicted[i])) for i in known) / len(known)
    topk = sum(images.labels[i] in forward.top_indices[i].tolist() for i in known) / len(known)
    return {"labelled_images": len(known), "top1": top1, f"top{forward.top_indices.shape[1]}": topk}


def per_class_accuracy(ctx: AuditContext) -> dict[int, dict[str, float | int]]:
    """accuracy() over the images of each true class, by class index, in index order."""
    rows: dict[int, list[int]] = {}
    for i, label in enumerate(ctx.images.labels):
        if label is not None:
            rows.setdefault(label, []).append(i)
    return {label: accuracy(ctx, rows[label]) for label in sorted(rows)}


def truth(ctx: AuditContext, index: int) -> tuple[str | None, bool | None]:
    """Image `index`'s true class name and whether the top-1 prediction is it (None, None when unknown)."""
    label = ctx.images.labels[index]
    if label is None:
        return None, None
    names = ", ".join(ctx.class_names[c] for c in ctx.images.label_sets[index])
    return names, ctx.images.correct(index, ctx.forward.predicted[index])


def verdict(correct: bool | None) -> str:
    return "" if correct is None else ("correct" if correct else "incorrect")


def card(ctx: AuditContext, index: int, reason: str) -> Card:
    """One image: its photo, top-k bars, the true class and why the gallery shows it."""
    forward, names, images = ctx.forward, ctx.class_names, ctx.images
    true_name, correct = truth(ctx, index)
    lines = []
    if forward.head.kind == "sigmoid":
        lines.append("predicted: " + (", ".join(names[c] for c in forward.predicted[index]) or "no label"))
    if true_name is not None:
        p = ", ".join(f"{float(forward.probabilities[index, c]):.3f}" for c in images.label_sets[index])
        lines.append(f"true class: {true_name} (p = {p})")
    elif images.label_names[index] is not None:
        lines.append(f"label {images.label_names[index]!r} matches no class name")
    if reason:
        lines.append(f"shown as: {reason}")
    return Card(
        title=images.names[index],
        image=to_jpeg(ctx.photo(index), quality=85),
        mime="image/jpeg",
        bars=[Bar(names[j], float(p), highlight=(j in images.label_sets[index]))
              for j, p in zip(forward.top_indices[index].tolist(), forward.top_probabilities[index])],
        lines=lines,
        badge=verdict(correct),
        badge_ok=correct,
    )


def per_image(ctx: AuditContext) -> tuple[list[list[object]], list[dict[str, object]]]:
    """Every image's top-1 row for the table and its top-k entry for report.json."""
    names, images = ctx.class_names, ctx.images
    indices, probabilities = ctx.forward.top_indices.tolist(), ctx.forward.top_probabilities.tolist()
    rows, entries = [], []
    for i, image_name in enumerate(images.names):
        top = [(names[j], p) for j, p in zip(indices[i], probabilities[i])]
        true_name, correct = truth(ctx, i)
        row: list[object] = [image_name, top[0][0], round(top[0][1], 3)]
        rows.append(row + [true_name, verdict(correct) or None] if images.has_labels else row)
        entries.append({"image": image_name, "top": [{"class": n, "probability": p} for n, p in top],
                        "true_class": true_name, "correct": correct})
    return rows, entries


def class_table(ctx: AuditContext, k: int) -> tuple[Table, list[dict[str, object]]]:
    """Accuracy per true class, over every labelled image, as a table and as report.json entries."""
    found = per_class_accuracy(ctx)
    entries = [{"class": ctx.class_names[c], **scores} for c, scores in found.items()]
    rows = [[e["class"], e["labelled_images"], round(float(e["top1"]), 3), round(float(e[f"top{k}"]), 3)]
            for e in entries]
    table = Table("predictions-per-class", "Accuracy per true class, over every image of that class.",
                  ["true class", "images", "top-1 accuracy", f"top-{k} accuracy"], rows,
                  folded=len(rows) > FOLD_ROWS)
    return table, entries


def predictions_section(heading: Heading, ctx: AuditContext) -> Section:
    """Cards for the gallery's images, a table of every image, and accuracy (overall and per class) when known."""
    forward, images, gallery = ctx.forward, ctx.images, ctx.gallery
    k = forward.top_indices.shape[1]
    rows, entries = per_image(ctx)
    metrics: dict[str, object] = {"images": entries}
    sampled = len(gallery.indices) < len(images)
    text = (f"The model's {k} most probable classes for each of the {len(images)} images, "
            f"from one batched forward pass; probabilities by {forward.head.describe()}.")
    if sampled:
        text += f" The cards show {gallery.rule}; the table and every number count all {len(images)}."
    found = accuracy(ctx, range(len(images)))
    blocks = [
        Cards("predictions", f"Top-{k} predicted classes and probabilities for "
                             f"{f'{len(gallery.indices)} of the {len(images)} images' if sampled else 'each image'}.",
              [card(ctx, i, reason) for i, reason in zip(gallery.indices, gallery.reasons)]),
        Table("predictions-summary", f"Top-1 prediction for each of the {len(images)} images.",
              ["image", "top-1 class", "probability"] + (["true class", "verdict"] if images.has_labels else []),
              rows, folded=len(rows) > FOLD_ROWS),
    ]
    if found is not None:
        metrics["accuracy"] = found
        text += (f" Over the {found['labelled_images']} images with a known class, top-1 accuracy is "
                 f"{found['top1']:.1%} and top-{k} accuracy {found[f'top{k}']:.1%}.")
        table, metrics["per_class"] = class_table(ctx, k)
        blocks.append(table)
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics)
