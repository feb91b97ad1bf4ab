"""Findings: a few sentences at the top of the report, each citing its number, its section and its rule.

Pure functions over the finished sections' metrics and the audit record (torch-free, so a report read
back from report.json can be given the same findings). Each rule reads one section; a section that did
not run, or failed, gives no finding. The rules, in report order:
- performance: accuracy and the weakest class; the most confused pair; calibration; images whose label
  disagrees with a confident prediction;
- trust: which saliency methods pass the randomisation check, and the one to trust; maps whose mass is
  mostly outside the object (with --boxes);
- cam: images whose map of the top class peaks at the image border;
- the audit record: exact duplicate images (same sha256).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from auditor.document import Finding, Section
from auditor.techniques.performance import (
    CALIBRATION_TOLERANCE,
    ECE_BINS,
    calibration_verdict,
)

BORDER = 0.1  # a map peaks at the border when its peak lies within this share of the width or height of an edge
MOSTLY_OUTSIDE = 0.5  # a map is mostly outside the boxes when less than this share of its mass is inside
LISTED = 5  # image names quoted in a finding, at most

Metrics = Mapping[str, Any]


def _names(items: Sequence[str], limit: int = LISTED) -> str:
    """"a, b and c"; beyond `limit` names, "a, b, c and 4 more"."""
    if len(items) > limit:
        return ", ".join(items[:limit]) + f" and {len(items) - limit:,} more"
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (plural or word + 's')}"


def accuracy_finding(metrics: Metrics) -> Finding | None:
    per_class = list(metrics.get("per_class") or [])
    if not per_class:
        return None
    k = metrics["top_k"]
    text = (f"Top-1 accuracy is {metrics['accuracy']:.1%} over {_plural(metrics['labelled_images'], 'labelled image')} "
            f"(top-{k} {metrics['top_k_accuracy']:.1%}, balanced {metrics['balanced_accuracy']:.1%}, macro F1 "
            f"{metrics['macro_f1']:.3f})")
    if len(per_class) > 1:
        order = sorted(range(len(per_class)), key=lambda i: (per_class[i]["f1"], per_class[i]["recall"],
                                                             -per_class[i]["support"], i))
        weakest = per_class[order[0]]
        text += (f"; the weakest class is {weakest['class']}: F1 {weakest['f1']:.3f}, recall {weakest['recall']:.1%} "
                 f"over {_plural(weakest['support'], 'image')}")
    return Finding(text + ".", "performance", metrics["accuracy"],
                   "weakest class: the lowest F1 among the classes with images (ties: the lower recall, then the "
                   "class with more images)")


def confused_finding(metrics: Metrics) -> Finding | None:
    pairs = metrics.get("most_confused") or []
    if not pairs:
        return None
    top = pairs[0]
    support = {c["class"]: c["support"] for c in metrics.get("per_class", [])}
    share = f" ({top['count'] / support[top['true']]:.0%} of its {support[top['true']]:,})" if top["true"] in support \
        else ""
    return Finding(f"The most confused pair is {top['true']} → {top['predicted']}: "
                   f"{_plural(top['count'], 'image')} of {top['true']}{share} predicted as {top['predicted']}.",
                   "performance", top["count"],
                   "the largest cell off the diagonal of the confusion matrix (rows: true classes), ties in class "
                   "order")


def calibration_finding(metrics: Metrics) -> Finding | None:
    if metrics.get("mean_confidence") is None or metrics.get("ece") is None:
        return None
    confidence, accuracy = metrics["mean_confidence"], metrics["accuracy"]
    verdict = calibration_verdict(confidence, accuracy)
    numbers = f"mean top-1 confidence {confidence:.3f} against accuracy {accuracy:.3f}, ECE {metrics['ece']:.3f}"
    words = {"over-confident": "The model is over-confident", "under-confident": "The model is under-confident",
             "calibrated": "The model's confidence matches its accuracy"}[verdict]
    return Finding(f"{words}: {numbers}.", "performance", metrics["ece"],
                   f"over- or under-confident when the mean top-1 confidence and the accuracy differ by more than "
                   f"{CALIBRATION_TOLERANCE}; ECE over {ECE_BINS} equal-width bins of top-1 confidence, weighted by "
                   f"the images in each (Guo et al., 2017)")


def label_finding(metrics: Metrics) -> Finding | None:
    found = metrics.get("confident_mistakes") or {}
    if not found.get("count"):
        return None
    first = found["images"][0]
    more = found["count"] - 1
    return Finding(f"{_plural(found['count'], 'labelled image')} disagree{'s' if found['count'] == 1 else ''} with "
                   f"a confident prediction: {first['image']} is labelled {first['true']} but predicted "
                   f"{first['predicted']} at {first['confidence']:.3f}"
                   + (f", and {more:,} more (listed in the section)" if more else "") + ".",
                   "performance", found["count"],
                   f"a top-1 probability of at least {found['threshold']} for a class other than the label: a wrong "
                   f"label, or a confident mistake")


def sanity_finding(metrics: Metrics, names: Mapping[str, str]) -> Finding | None:
    """Which methods pass the randomisation check, then the trust section's recommendation, quoted."""
    methods = metrics.get("methods") or {}
    if not methods:
        return None
    passing = [k for k, m in methods.items() if m["randomization"]["verdict"] == "pass"]
    failing = [k for k in methods if k not in passing]
    named = {k: names.get(k, k) for k in methods}
    if passing:
        text = f"{_names([named[k] for k in passing], len(passing))} pass{'es' if len(passing) == 1 else ''} the " \
               f"randomisation sanity check"
        text += f"; {_names([named[k] for k in failing], len(failing))} do{'es' if len(failing) == 1 else ''} not" \
            if failing else ""
    else:
        text = "No saliency method passes the randomisation sanity check"
    images = metrics.get("images") or []
    text += f" (on {_plural(len(images), 'image')})." if images else "."
    recommended = metrics.get("recommended") or {}
    if recommended.get("why"):
        text += f" {recommended['why']}"
    threshold = metrics.get("threshold")
    return Finding(text, "trust", recommended.get("method"),
                   f"pass: the maps' mean Spearman rank correlation with the trained model's, under cascading "
                   f"weight randomisation, is below {threshold}; recommended: of the methods that pass, the one "
                   f"whose deletion and insertion AUCs beat the random map's by the largest sum")


def box_finding(metrics: Metrics, names: Mapping[str, str]) -> Finding | None:
    methods = metrics.get("methods") or {}
    inside = {k: m["mass_inside"] for k, m in methods.items()
              if isinstance(m.get("mass_inside"), (int, float)) and not math.isnan(m["mass_inside"])}
    outside = [k for k, mass in inside.items() if mass < MOSTLY_OUTSIDE]
    if not outside:
        return None
    boxes = next((m.get("boxes") for m in methods.values() if m.get("boxes")), None)
    shares = ", ".join(f"{names.get(k, k)} {inside[k]:.0%}" for k in outside)
    return Finding(f"{_plural(len(outside), 'saliency method')} put{'s' if len(outside) == 1 else ''} most of "
                   f"{'its' if len(outside) == 1 else 'their'} map outside the boxed objects (mass inside: {shares}"
                   + (f", over {_plural(boxes, 'box', 'boxes')}" if boxes else "") + ").",
                   "trust", {k: inside[k] for k in outside},
                   f"mostly outside: less than {MOSTLY_OUTSIDE:.0%} of the map's mass inside the object's boxes, "
                   f"averaged over the boxes given with --boxes")


def at_border(xy: Sequence[float], margin: float = BORDER) -> bool:
    """Whether a peak (x, y as fractions of the width and height) lies within `margin` of an edge."""
    return min(xy) < margin or max(xy) > 1 - margin


def border_finding(metrics: Metrics, names: Mapping[str, str]) -> Finding | None:
    images = [i for i in metrics.get("images") or [] if i.get("classes")]
    if not images:
        return None
    peaks = images[0]["classes"][0]["peak_xy"]
    method = "grad-cam" if "grad-cam" in peaks else next(iter(peaks), None)
    if method is None:
        return None
    found = [i["image"] for i in images if method in i["classes"][0]["peak_xy"]
             and at_border(i["classes"][0]["peak_xy"][method])]
    if not found:
        return None
    return Finding(f"{len(found):,} of the {_plural(len(images), 'image')} the CAM section explains "
                   f"{'has its' if len(found) == 1 else 'have their'} {names.get(method, method)} map of the top "
                   f"class peak at the image border: {_names(found)}. A peak there hints at a shortcut, such as a "
                   f"watermark or a frame.", "cam", len(found),
                   f"at the border: the map's peak lies within {BORDER:.0%} of the image's width or height from an "
                   f"edge")


def duplicate_finding(record: Metrics) -> Finding | None:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in (record.get("images") or {}).get("files") or []:
        groups[entry["sha256"]].append(entry)
    repeated = [files for files in groups.values() if len(files) > 1]
    if not repeated:
        return None
    copies = sum(len(files) for files in repeated)
    relabelled = sum(len({f["label"] for f in files}) > 1 for files in repeated)
    listed = "; ".join(" = ".join(f["name"] for f in files) for files in repeated[:LISTED])
    listed += f"; and {len(repeated) - LISTED} more groups" if len(repeated) > LISTED else ""
    text = (f"{copies:,} images are exact duplicates, in {_plural(len(repeated), 'group')}"
            + (f" ({relabelled:,} with different labels)" if relabelled else "") + f": {listed}.")
    return Finding(text, "appendix", len(repeated), "exact duplicates: the same sha256 of the file's bytes (the "
                                                    "appendix lists every image's hash)")


def findings(record: Metrics, sections: Sequence[Section], method_names: Mapping[str, str] | None = None
             ) -> list[Finding]:
    """Every finding the rules make on these sections and this record, in report order."""
    names = method_names or {}
    ran = {s.technique: s.metrics for s in sections if s.error is None and "not_applicable" not in s.metrics}
    rules: list[tuple[str | None, Callable[[Metrics], Finding | None]]] = [  # None: the audit record
        ("performance", accuracy_finding), ("performance", confused_finding), ("performance", calibration_finding),
        ("trust", lambda m: sanity_finding(m, names)), ("trust", lambda m: box_finding(m, names)),
        ("cam", lambda m: border_finding(m, names)), (None, duplicate_finding), ("performance", label_finding),
    ]
    found = [rule(record if source is None else ran[source]) for source, rule in rules
             if source is None or source in ran]
    return [f for f in found if f is not None]
