"""Predictions: each image with its top-k classes, the true class when known, and accuracy."""

from __future__ import annotations

import torch

from auditor.context import AuditContext
from auditor.render import to_jpeg
from auditor.section import Bar, Card, Cards, Heading, Section, Table


def accuracy(top_indices: torch.Tensor, labels: list[int | None]) -> dict[str, float | int] | None:
    """Top-1 and top-k accuracy over the labelled images; None when no image has a known class."""
    known = [(row, label) for row, label in zip(top_indices.tolist(), labels) if label is not None]
    if not known:
        return None
    top1 = sum(row[0] == label for row, label in known) / len(known)
    topk = sum(label in row for row, label in known) / len(known)
    return {"labelled_images": len(known), "top1": top1, f"top{top_indices.shape[1]}": topk}


def predictions_section(heading: Heading, ctx: AuditContext) -> Section:
    """Cards with each image's top-k classes, a summary table, and accuracy when labels are known."""
    forward = ctx.forward
    names = ctx.class_names
    images = ctx.images
    k = forward.top_indices.shape[1]
    cards, rows, per_image = [], [], []
    for i, image_name in enumerate(images.names):
        top = [(names[j], float(p)) for j, p in zip(forward.top_indices[i].tolist(), forward.top_probabilities[i])]
        label = images.labels[i]
        truth = names[label] if label is not None else None
        correct = None if label is None else int(forward.top_indices[i, 0]) == label
        badge = "" if correct is None else ("correct" if correct else "incorrect")
        lines = []
        if truth is not None:
            lines.append(f"true class: {truth} (p = {float(forward.probabilities[i, label]):.3f})")
        elif images.label_names[i] is not None:
            lines.append(f"folder {images.label_names[i]!r} matches no class name")
        cards.append(Card(
            title=image_name,
            image=to_jpeg(ctx.photo(i), quality=85),
            mime="image/jpeg",
            bars=[Bar(n, p, highlight=(n == truth)) for n, p in top],
            lines=lines,
            badge=badge,
            badge_ok=correct,
        ))
        row = [image_name, top[0][0], round(top[0][1], 3)]
        rows.append(row + [truth, badge or None] if images.has_labels else row)
        per_image.append({"image": image_name, "top": [{"class": n, "probability": p} for n, p in top],
                          "true_class": truth, "correct": correct})
    metrics: dict[str, object] = {"images": per_image}
    text = (f"The model's {k} most probable classes for each of the {len(images)} images, "
            f"from one batched forward pass.")
    found = accuracy(forward.top_indices, images.labels)
    if found is not None:
        metrics["accuracy"] = found
        text += (f" Over the {found['labelled_images']} images with a known class, top-1 accuracy is "
                 f"{found['top1']:.1%} and top-{k} accuracy {found[f'top{k}']:.1%}.")
    blocks = [
        Cards("predictions", f"Top-{k} predicted classes and probabilities for each image.", cards),
        Table("predictions-summary", "Top-1 prediction for each image.",
              ["image", "top-1 class", "probability"] + (["true class", "verdict"] if images.has_labels else []),
              rows),
    ]
    return Section(heading.name, heading.title, text=text, blocks=blocks, metrics=metrics)
