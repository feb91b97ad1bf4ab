"""The compare report's sections: records, predictions, accuracy, confusion, map similarity, trust.

Each builder reads the two runs' report.json (and maps) and returns a plain Section; `compare_runs`
puts them in a Report whose record says which runs were compared.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import numpy as np

from auditor import __version__
from auditor.compare.runs import Run
from auditor.compare.similarity import TOP_FRACTION, spearman, top_iou
from auditor.config import RunOptions
from auditor.document import Figure, Finding, Report, Section, Table

GALLERY = RunOptions.gallery_images  # image and method pairs shown in the moved-maps gallery
TILE_PX = 128
RECORD_FIELDS = [  # (label, path in the record)
    ("model name", ("model", "name")), ("model spec", ("model", "spec")), ("model kind", ("model", "kind")),
    ("weights", ("model", "weights")), ("model hash (state dict sha256)", ("model", "state_dict_sha256")),
    ("files sha256", ("model", "files_sha256")), ("parameters", ("model", "parameters")),
    ("preprocessing", ("model", "preprocess")), ("input size", ("model", "input_size")),
    ("classes", ("model", "classes")), ("head", ("model", "head", "rule")),
    ("images", ("images", "count")), ("auditor", ("auditor_version",)), ("python", ("environment", "python")),
    ("torch", ("environment", "torch")), ("torchvision", ("environment", "torchvision")),
    ("platform", ("environment", "platform")), ("device", ("environment", "device")),
    ("input layout", ("environment", "input_layout")), ("seed", ("seed",)),
]
NOT_COMPARED_OPTIONS = {"out"}  # where the report went is no difference in the audit


def _get(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


def records_section(a: Run, b: Run) -> Section:
    """What differs in the two audit records: model, weights, preprocessing, versions, options."""
    rows, same = [], []
    fields = [(label, _get(a.record, path), _get(b.record, path)) for label, path in RECORD_FIELDS]
    images_a, images_b = set(a.sha256_of.values()), set(b.sha256_of.values())
    fields.append(("image set (sha256s)", f"{len(images_a)} images", f"{len(images_b)} images, "
                   f"{len(images_a & images_b)} in both" if images_a != images_b else f"{len(images_b)} images"))
    options_a, options_b = a.record.get("options", {}), b.record.get("options", {})
    for key in sorted(set(options_a) | set(options_b), key=lambda k: (k not in options_a, k)):
        if key not in NOT_COMPARED_OPTIONS:
            fields.append((f"option {key}", options_a.get(key), options_b.get(key)))
    differences = []
    for label, va, vb in fields:
        if label == "image set (sha256s)":
            if images_a != images_b:
                rows.append([label, va, vb])
                differences.append({"field": label, "a": sorted(images_a - images_b), "b": sorted(images_b - images_a)})
            else:
                same.append(label)
        elif va != vb:
            rows.append([label, _text(va), _text(vb)])
            differences.append({"field": label, "a": va, "b": vb})
        else:
            same.append(label)
    blocks = [Table("compare-records", f"What differs in the two audit records ({len(rows)} of {len(fields)} "
                                       f"entries; the other {len(same)} are the same).",
                    ["entry", "run A", "run B"], rows)] if rows else []
    text = (f"Run A: {a.label}, audited {a.record.get('created', '?')}. Run B: {b.label}, audited "
            f"{b.record.get('created', '?')}. The table lists every entry of the two audit records that differs: "
            f"the model and its weights' hash, preprocessing, the images, versions and every option.")
    notes = [] if rows else ["The two records are the same in every entry compared."]
    return Section("records", "What differs in the records", text=text, blocks=blocks, notes=notes,
                   metrics={"differences": differences, "same": same})


def _predictions(run: Run) -> dict[str, dict[str, Any]]:
    """sha256 -> the predictions section's entry (image, top, true_class, correct)."""
    section = run.section("predictions")
    if section is None:
        return {}
    return {run.sha256_of[e["image"]]: e for e in section["metrics"].get("images", []) if e["image"] in run.sha256_of}


def _top1(entry: dict[str, Any]) -> dict[str, Any]:
    top = entry.get("top") or [{}]
    return {"class": top[0].get("class"), "probability": top[0].get("probability")}


def predictions_section(a: Run, b: Run) -> Section:
    """The images in both runs whose top-1 class changed, with before and after."""
    pa, pb = _predictions(a), _predictions(b)
    both = [h for h in pa if h in pb]
    changed = []
    for h in both:
        before, after = _top1(pa[h]), _top1(pb[h])
        if before["class"] != after["class"]:
            changed.append({"image": pb[h]["image"], "sha256": h, "before": before, "after": after,
                            "true_class": pb[h].get("true_class")})
    metrics = {"matched": len(both), "only_a": len(set(pa) - set(pb)), "only_b": len(set(pb) - set(pa)),
               "changed": len(changed), "images": changed}
    if not pa or not pb:
        return Section("predictions", "Predictions that changed", metrics=metrics,
                       notes=["Both runs need the predictions section to compare predictions."])
    rows = [[c["image"], c["before"]["class"], c["before"]["probability"], c["after"]["class"],
             c["after"]["probability"], _text(c["true_class"])] for c in changed]
    blocks = [Table("compare-changed", f"The {len(changed)} images whose top-1 class changed from run A to run B, "
                                       f"with the class's probability in each run and the true class where known.",
                    ["image", "top-1 in A", "p (A)", "top-1 in B", "p (B)", "true class"], rows)] if changed else []
    text = (f"{len(both)} images are in both runs (matched by sha256, whatever their file names); "
            f"the top-1 class of {len(changed)} of them changed.")
    if metrics["only_a"] or metrics["only_b"]:
        text += f" {metrics['only_a']} images are only in run A and {metrics['only_b']} only in run B."
    return Section("predictions", "Predictions that changed", text=text, blocks=blocks, metrics=metrics)


def _accuracy(run: Run, hashes: set[str]) -> float | None:
    entries = [e for h, e in _predictions(run).items() if h in hashes and e.get("correct") is not None]
    return sum(bool(e["correct"]) for e in entries) / len(entries) if entries else None


def _delta(x: Any, y: Any) -> float | None:
    return y - x if isinstance(x, (int, float)) and isinstance(y, (int, float)) else None


def _on(matrix: dict[str, Any], classes: list[str]) -> np.ndarray:
    """A confusion matrix {classes, counts} on `classes` (a class it lacks had no image and no prediction)."""
    where = [classes.index(c) for c in matrix["classes"]]
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    counts[np.ix_(where, where)] = np.asarray(matrix["counts"], dtype=np.int64)
    return counts


def accuracy_section(a: Run, b: Run) -> Section:
    """Accuracy and per-class deltas when labels are known; the confusion-matrix delta when both have one."""
    perf_a, perf_b = a.section("performance"), b.section("performance")
    ma, mb = (perf_a or {}).get("metrics", {}), (perf_b or {}).get("metrics", {})
    both = set(_predictions(a)) & set(_predictions(b))
    blocks: list[Any] = []
    rows = [["accuracy on the images in both", _accuracy(a, both), _accuracy(b, both)]]
    rows += [[key.replace("_", " "), ma.get(key), mb.get(key)]
             for key in ("accuracy", "top_k_accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "ece")
             if key in ma or key in mb]
    rows = [[name, x, y, _delta(x, y)] for name, x, y in rows]
    metrics: dict[str, Any] = {"overall": [{"metric": r[0], "a": r[1], "b": r[2], "delta": r[3]} for r in rows]}
    if all(r[1] is None and r[2] is None for r in rows):
        return Section("accuracy", "Accuracy and per-class deltas", metrics=metrics,
                       notes=[("No labels are known in both runs (subfolders named after classes, or --labels-csv): "
                               "there is no accuracy to compare.")])
    blocks.append(Table("compare-accuracy", "Accuracy and the other scores of each run, and the change from A to B "
                                            "(B − A; the first row on the images both runs have).",
                        ["score", "run A", "run B", "change"], rows))
    per_a = {c["class"]: c for c in ma.get("per_class", [])}
    per_b = {c["class"]: c for c in mb.get("per_class", [])}
    classes = [c for c in per_a if c in per_b]
    if classes:
        per_rows = [[c, per_a[c].get("f1"), per_b[c].get("f1"), _delta(per_a[c].get("f1"), per_b[c].get("f1")),
                     _delta(per_a[c].get("recall"), per_b[c].get("recall")), per_b[c].get("support")]
                    for c in classes]
        per_rows.sort(key=lambda r: (r[3] is None, r[3] if r[3] is not None else 0))
        blocks.append(Table("compare-per-class", "Per-class F1 in each run and the change in F1 and recall, "
                                                 "most worsened first.",
                            ["class", "F1 (A)", "F1 (B)", "F1 change", "recall change", "support (B)"], per_rows))
        metrics["per_class"] = [{"class": r[0], "f1_a": r[1], "f1_b": r[2], "f1_delta": r[3], "recall_delta": r[4]}
                                for r in per_rows]
    notes = []
    cm_a, cm_b = ma.get("confusion_matrix"), mb.get("confusion_matrix")
    if cm_a and cm_b:
        classes = list(dict.fromkeys([*cm_a["classes"], *cm_b["classes"]]))  # a class absent from one: all zero
        delta = (_on(cm_b, classes) - _on(cm_a, classes)).tolist()
        metrics["confusion_delta"] = {"classes": classes, "counts": delta}
        blocks.append(Table("compare-confusion", "Confusion-matrix delta: run B's counts minus run A's (rows: true "
                                                 "class, columns: predicted), over the classes either matrix has. "
                                                 "Positive off the diagonal: more of that mistake in B.",
                            ["true \\ predicted", *classes], [[name, *row] for name, row in zip(classes, delta)]))
    elif cm_a or cm_b:
        notes.append("Only one run has a confusion matrix (the performance section), so no delta is shown.")
    return Section("accuracy", "Accuracy and per-class deltas", blocks=blocks, metrics=metrics, notes=notes,
                   text="Scores from each run's report.json; the change is run B's minus run A's.")


def _colour_tile(heat: np.ndarray, title: str, colormap: str) -> Any:
    from auditor.drawing import colorize, titled, upscale

    picture = upscale(colorize(heat, colormap, 0.0, 1.0), TILE_PX)
    return titled(picture, title, size=11)


def maps_section(a: Run, b: Run) -> Section:
    """Per CAM method, how alike the two runs' top-class maps are on the images both kept."""
    def by_image(run: Run) -> dict[str, dict[str, np.ndarray]]:
        found: dict[str, dict[str, np.ndarray]] = {}
        for key, heat in run.maps.items():
            sha, _, method = key.partition("/")
            found.setdefault(sha, {})[method] = heat
        return found

    ma, mb = by_image(a), by_image(b)
    name_of = {**{h: n for n, h in a.sha256_of.items()}, **{h: n for n, h in b.sha256_of.items()}}
    pairs = []
    for sha in (h for h in mb if h in ma):
        for method in (m for m in mb[sha] if m in ma[sha]):
            before, after = ma[sha][method], mb[sha][method]  # each tile is upscaled on its own
            pairs.append({"image": name_of.get(sha, sha[:12]), "sha256": sha, "method": method,
                          "spearman": spearman(before, after), "iou_top20": top_iou(before, after),
                          "maps": (before, after)})
    title = "Where the model looks: map similarity"
    if not pairs:
        why = ("Neither run kept maps (maps.safetensors, written with the CAM section)" if not ma and not mb else
               "No image has a CAM map in both runs (matched by sha256)")
        return Section("maps", title, notes=[f"{why}: there are no maps to compare."],
                       metrics={"map_similarity": {}, "images": []})
    similarity: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(p["method"] for p in pairs):
        chosen = [p for p in pairs if p["method"] == method]
        rhos = [p["spearman"] for p in chosen if p["spearman"] is not None]
        similarity[method] = {"spearman": float(np.mean(rhos)) if rhos else None,
                              "iou_top20": float(np.mean([p["iou_top20"] for p in chosen])), "images": len(chosen)}
    rows = [[m, s["images"], s["spearman"], s["iou_top20"]] for m, s in similarity.items()]
    blocks: list[Any] = [Table("compare-map-similarity",
                               f"Map similarity per CAM method, mean over the images both runs kept: Spearman rank "
                               f"correlation and the IoU of the top {TOP_FRACTION:.0%} of each map (both 1 for "
                               f"identical maps). Each is the top class's map at the target layer's resolution.",
                               ["method", "images", "Spearman", f"IoU top {TOP_FRACTION:.0%}"], rows)]
    moved = sorted(pairs, key=lambda p: (p["spearman"] if p["spearman"] is not None else -2, p["iou_top20"]))
    moved = [p for p in moved if (p["spearman"] or 0) < 1 - 1e-6 or p["iou_top20"] < 1 - 1e-6][:GALLERY]
    if moved:
        from auditor.drawing import colorbar, stack, titled, to_png

        colormap = b.record.get("options", {}).get("colormap", RunOptions.colormap)  # run B's, as audited
        lines = [titled(stack([_colour_tile(p["maps"][0], "before (A)", colormap),
                               _colour_tile(p["maps"][1], "after (B)", colormap)],
                              vertical=False, gap=4), f"{p['image']} · {p['method']}", size=12) for p in moved]
        captions = [f"{p['image']} ({p['method']}, ρ {p['spearman'] if p['spearman'] is None else round(p['spearman'], 2)}, "
                    f"IoU {p['iou_top20']:.2f})" for p in moved]
        grid = stack([stack(lines[i:i + 2], vertical=False, gap=16) for i in range(0, len(lines), 2)], gap=10)
        picture = stack([grid, colorbar(colormap, 0.0, 1.0, 300, "map value (each map scaled to its maximum)")],
                        gap=8)
        blocks.append(Figure("compare-moved-maps", "The maps that moved most, before (run A, left) and after (run B, "
                             "right), lowest Spearman first: " + "; ".join(captions) + ". Drawn from the kept maps "
                             "alone at the layer's resolution (no photo is stored), in " + colormap + " colours.",
                             to_png(picture), "image/png", alt="Before and after maps of the images that moved most."))
    per_image = [{k: v for k, v in p.items() if k != "maps"} for p in pairs]
    text = (f"{len({p['sha256'] for p in pairs})} images have CAM maps in both runs' maps.safetensors. "
            f"Spearman compares the order of every location's value; the IoU compares the top {TOP_FRACTION:.0%} "
            f"regions. Low values mean the model now looks elsewhere.")
    notes = []
    if any(a_.shape != b_.shape for a_, b_ in ((ma[p['sha256']][p['method']], mb[p['sha256']][p['method']])
                                               for p in pairs)):
        notes.append("Some maps were at different resolutions (another target layer); they were compared on the "
                     "finer grid, bilinearly resized.")
    return Section("maps", title, text=text, blocks=blocks, notes=notes,
                   metrics={"map_similarity": similarity, "images": per_image})


def trust_section(a: Run, b: Run) -> Section:
    """The trust table's deltas: a method that stopped passing its sanity check is flagged."""
    ta, tb = a.section("trust"), b.section("trust")
    if ta is None or tb is None:
        return Section("trust", "Trust in each explanation: deltas", metrics={"methods": {}, "stopped_passing": []},
                       notes=["Both runs need the trust section to compare the explanation methods."])
    methods_a, methods_b = ta["metrics"].get("methods", {}), tb["metrics"].get("methods", {})
    rows, out, stopped = [], {}, []
    for method in (m for m in methods_b if m in methods_a):
        x, y = methods_a[method], methods_b[method]
        va = (x.get("randomization") or {}).get("verdict")
        vb = (y.get("randomization") or {}).get("verdict")
        flag = "stopped passing" if va == "pass" and vb != "pass" else ("now passes" if vb == "pass" and va != "pass"
                                                                       else "")
        if flag == "stopped passing":
            stopped.append(method)
        entry = {"sanity_a": va, "sanity_b": vb, "flag": flag or None}
        for key in ("deletion_auc", "insertion_auc", "random_logit_spearman"):
            entry[f"{key}_a"], entry[f"{key}_b"] = x.get(key), y.get(key)
            entry[f"{key}_delta"] = _delta(x.get(key), y.get(key))
        out[method] = entry
        rows.append([method, _text(va), _text(vb), entry["deletion_auc_delta"], entry["insertion_auc_delta"],
                     entry["random_logit_spearman_delta"], flag or "—"])
    table = Table("compare-trust", "The trust table's changes from run A to run B per saliency method: the sanity "
                                   "verdict in each run, and the change (B − A) in deletion AUC (lower is better), "
                                   "insertion AUC (higher is better) and the Spearman correlation with a random "
                                   "other class's map. A method that passed in A and not in B is flagged.",
                  ["method", "sanity (A)", "sanity (B)", "deletion AUC change", "insertion AUC change",
                   "random-class Spearman change", "flag"], rows)
    notes = [f"{m} stopped passing the randomisation sanity check." for m in stopped]
    return Section("trust", "Trust in each explanation: deltas", blocks=[table], notes=notes,
                   metrics={"methods": out, "stopped_passing": stopped})


def _findings(sections: dict[str, Section]) -> list[Finding]:
    found = []
    changed = sections["predictions"].metrics
    if changed.get("matched"):
        found.append(Finding(f"The top-1 class changed for {changed['changed']} of the {changed['matched']} images in "
                             f"both runs.", "predictions", changed["changed"],
                             "an image in both runs (same sha256) whose most probable class differs"))
    for method in sections["trust"].metrics.get("stopped_passing", []):
        found.append(Finding(f"{method} stopped passing the randomisation sanity check.", "trust", method,
                             "passed in run A, not in run B"))
    similarity = sections["maps"].metrics.get("map_similarity", {})
    low = {m: s["spearman"] for m, s in similarity.items() if s["spearman"] is not None and s["spearman"] < 0.5}
    if low:
        found.append(Finding("The maps moved: mean Spearman " + ", ".join(f"{m} {v:.2f}" for m, v in low.items())
                             + ".", "maps", low, "a CAM method whose mean Spearman similarity is below 0.5"))
    return found


def compare_runs(a: Run, b: Run) -> Report:
    """The compare report of run A against run B."""
    built = {s.technique: s for s in (records_section(a, b), predictions_section(a, b), accuracy_section(a, b),
                                      maps_section(a, b), trust_section(a, b))}
    record = {
        "kind": "compare",
        "auditor_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": {which: {"folder": str(run.folder), "model": run.record.get("model", {}).get("name"),
                         "state_dict_sha256": run.record.get("model", {}).get("state_dict_sha256"),
                         "created": run.record.get("created"), "images": run.record.get("images", {}).get("count"),
                         "report_json_sha256": run.json_sha256,
                         "maps_sha256": (run.record.get("maps") or {}).get("sha256"), "maps_kept": len(run.maps)}
                 for which, run in (("a", a), ("b", b))},
    }
    return Report(record, list(built.values()), _findings(built))
