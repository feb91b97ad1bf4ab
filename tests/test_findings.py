"""The findings at the top of the report: each rule on both sides of its threshold, and their rendering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from auditor.document import Finding, Report, Section
from auditor.report.html import render_html
from auditor.report.manifest import render_json
from auditor.sections.findings import (
    BORDER,
    MOSTLY_OUTSIDE,
    accuracy_finding,
    border_finding,
    box_finding,
    calibration_finding,
    confused_finding,
    duplicate_finding,
    findings,
    label_finding,
    sanity_finding,
)
from auditor.techniques.performance import CALIBRATION_TOLERANCE
from auditor.techniques.trust.recommendation import recommend

NAMES = {"cam": "CAM", "grad-cam": "Grad-CAM", "guided-backprop": "Guided backprop"}


def performance(**changes: Any) -> dict[str, Any]:
    metrics = {
        "labelled_images": 100, "accuracy": 0.7, "top_k": 5, "top_k_accuracy": 0.9, "balanced_accuracy": 0.68,
        "macro_f1": 0.66, "mean_confidence": 0.8, "ece": 0.1,
        "per_class": [{"class": "husky", "precision": 0.5, "recall": 0.4, "f1": 0.444, "support": 50},
                      {"class": "wolf", "precision": 0.6, "recall": 1.0, "f1": 0.75, "support": 50}],
        "most_confused": [{"true": "husky", "predicted": "wolf", "count": 30}],
        "confident_mistakes": {"threshold": 0.9, "count": 0, "images": []},
    }
    return metrics | changes


def trust(**methods: dict[str, Any]) -> dict[str, Any]:
    return {"methods": methods, "random_baseline": {"deletion_auc": 0.3, "insertion_auc": 0.4},
            "images": ["a.png", "b.png", "c.png"], "threshold": 0.5}


def method(verdict: str, deletion: float = 0.2, insertion: float = 0.6, **more: Any) -> dict[str, Any]:
    return {"randomization": {"verdict": verdict}, "deletion_auc": deletion, "insertion_auc": insertion, **more}


def cam(*peaks: tuple[float, float]) -> dict[str, Any]:
    return {"images": [{"image": f"{i}.png", "classes": [{"class": "x", "peak_xy": {"grad-cam": list(xy),
                                                                                    "cam": [0.5, 0.5]}}]}
                       for i, xy in enumerate(peaks)]}


def test_accuracy_names_the_weakest_class_by_f1() -> None:
    found = accuracy_finding(performance())
    assert found.section == "performance" and found.value == 0.7
    assert found.text.startswith("Top-1 accuracy is 70.0% over 100 labelled images (top-5 90.0%")
    assert "the weakest class is husky: F1 0.444, recall 40.0% over 50 images" in found.text
    tie = performance(per_class=[{"class": "a", "precision": 0, "recall": 0.5, "f1": 0.5, "support": 2},
                                 {"class": "b", "precision": 0, "recall": 0.4, "f1": 0.5, "support": 9}])
    assert "weakest class is b" in accuracy_finding(tie).text  # same F1: the lower recall
    one = performance(per_class=performance()["per_class"][:1])
    assert "weakest" not in accuracy_finding(one).text


def test_most_confused_pair_only_when_there_are_mistakes() -> None:
    found = confused_finding(performance())
    assert found.text == "The most confused pair is husky → wolf: 30 images of husky (60% of its 50) predicted as wolf."
    assert found.value == 30
    assert confused_finding(performance(most_confused=[])) is None


@pytest.mark.parametrize(("confidence", "words"), [
    (0.7 + CALIBRATION_TOLERANCE + 0.01, "over-confident"), (0.7 + CALIBRATION_TOLERANCE - 0.01, "matches"),
    (0.7 - CALIBRATION_TOLERANCE + 0.01, "matches"), (0.7 - CALIBRATION_TOLERANCE - 0.01, "under-confident")])
def test_calibration_on_both_sides_of_the_tolerance(confidence: float, words: str) -> None:
    found = calibration_finding(performance(mean_confidence=confidence))
    assert words in found.text and "against accuracy 0.700, ECE 0.100" in found.text
    assert str(CALIBRATION_TOLERANCE) in found.rule and "15 equal-width bins" in found.rule


@pytest.mark.parametrize(("probability", "found"), [(0.89, False), (0.91, True)])
def test_a_label_disagreeing_with_a_confident_prediction(probability: float, found: bool) -> None:
    # the section counts what reaches the threshold (tests/test_performance.py); the finding reports a count
    from auditor.techniques.performance import Counts

    counts = Counts(2).add([0], [1], [probability])
    mistakes = {"threshold": 0.9, "count": counts.confident_mistakes,
                "images": [{"image": "dog/1.png", "true": "dog", "predicted": "cat", "confidence": probability}]}
    result = label_finding(performance(confident_mistakes=mistakes))
    assert (result is not None) == found
    if found:
        assert result.text == "1 labelled image disagrees with a confident prediction: dog/1.png is labelled dog " \
                              "but predicted cat at 0.910."
        assert "at least 0.9" in result.rule


def trusted(**methods: dict[str, Any]) -> dict[str, Any]:
    """Trust metrics with the section's recommendation, as the trust section records it."""
    metrics = trust(**methods)
    return {**metrics, "recommended": recommend(metrics["methods"], metrics["random_baseline"], NAMES).as_metrics()}


def test_sanity_names_who_passes_and_quotes_the_recommendation() -> None:
    found = sanity_finding(trusted(**{"cam": method("pass", 0.25, 0.5), "grad-cam": method("pass", 0.1, 0.7),
                                      "guided-backprop": method("warn", 0.05, 0.9)}), NAMES)
    assert found.text.startswith("CAM and Grad-CAM pass the randomisation sanity check; Guided backprop does not "
                                 "(on 3 images).")
    # margins: CAM (0.3 - 0.25) + (0.5 - 0.4) = 0.15, Grad-CAM (0.3 - 0.1) + (0.7 - 0.4) = 0.5
    assert found.text.endswith("Use Grad-CAM on this model: it passes the randomisation sanity check and has the "
                               "largest margin over the random map of the 2 methods that pass (+0.500: deletion AUC "
                               "0.100 against the random map's 0.300, insertion AUC 0.700 against 0.400).")
    assert found.value == "grad-cam" and "below 0.5" in found.rule


def test_a_method_that_passes_but_is_no_better_than_a_random_map_is_not_recommended() -> None:
    # margin (0.3 - 0.35) + (0.42 - 0.4) = -0.03: no better than chance
    found = sanity_finding(trusted(**{"grad-cam": method("pass", 0.35, 0.42), "cam": method("warn", 0.1, 0.9)}),
                           NAMES)
    assert "No method is recommended: of those that pass the sanity check, the most faithful, Grad-CAM, does no " \
           "better than a random map" in found.text and found.value is None
    nobody = sanity_finding(trusted(cam=method("warn")), NAMES)
    assert nobody.text.startswith("No saliency method passes")
    assert nobody.text.endswith("No method is recommended: none passes the randomisation sanity check, so every "
                                "map here may show the image more than the model.")


def test_the_recommendation_breaks_ties_by_the_tables_order() -> None:
    metrics = trust(**{"cam": method("pass", 0.1, 0.7), "grad-cam": method("pass", 0.1, 0.7)})
    assert recommend(metrics["methods"], metrics["random_baseline"], NAMES).method == "cam"
    only = trust(**{"cam": method("warn", 0.0, 1.0), "grad-cam": method("pass", 0.2, 0.6)})
    assert "the only method that passes, and it beats the random map (+0.300" in \
        recommend(only["methods"], only["random_baseline"], NAMES).why


@pytest.mark.parametrize(("mass", "found"), [(MOSTLY_OUTSIDE - 0.01, True), (MOSTLY_OUTSIDE + 0.01, False)])
def test_maps_mostly_outside_the_boxes(mass: float, found: bool) -> None:
    metrics = trust(**{"grad-cam": method("pass", mass_inside=mass, boxes=4),
                       "cam": method("pass", mass_inside=float("nan"), boxes=4)})
    result = box_finding(metrics, NAMES)
    assert (result is not None) == found
    if found:
        assert result.text == "1 saliency method puts most of its map outside the boxed objects (mass inside: " \
                              "Grad-CAM 49%, over 4 boxes)."
    assert box_finding(trust(**{"grad-cam": method("pass")}), NAMES) is None  # no boxes given


@pytest.mark.parametrize(("xy", "found"), [
    ((BORDER - 0.01, 0.5), True), ((BORDER + 0.01, 0.5), False), ((0.5, 1 - BORDER + 0.01), True),
    ((0.5, 1 - BORDER - 0.01), False)])
def test_maps_peaking_at_the_border(xy: tuple[float, float], found: bool) -> None:
    result = border_finding(cam(xy, (0.5, 0.5)), NAMES)
    assert (result is not None) == found
    if found:
        assert result.text.startswith("1 of the 2 images the CAM section explains has its Grad-CAM map of the top "
                                      "class peak at the image border: 0.png.")
        assert result.value == 1 and "within 10%" in result.rule


def test_exact_duplicates_by_sha256() -> None:
    files = [{"name": "a.png", "sha256": "1", "label": "cat"}, {"name": "b.png", "sha256": "2", "label": "cat"}]
    assert duplicate_finding({"images": {"files": files}}) is None
    files.append({"name": "dog/a.png", "sha256": "1", "label": "dog"})
    found = duplicate_finding({"images": {"files": files}})
    assert found.text == "2 images are exact duplicates, in 1 group (1 with different labels): a.png = dog/a.png."
    assert found.section == "appendix" and found.value == 1


def test_findings_skip_sections_that_failed_or_do_not_apply_and_keep_report_order() -> None:
    sections = [Section("performance", "P", metrics=performance()),
                Section("trust", "T", error="RuntimeError: boom", metrics=trust(cam=method("pass"))),
                Section("cam", "C", metrics=cam((0.01, 0.5)))]
    record = {"images": {"files": [{"name": "a", "sha256": "1", "label": None},
                                   {"name": "b", "sha256": "1", "label": None}]}}
    found = findings(record, sections, NAMES)
    assert [f.section for f in found] == ["performance", "performance", "performance", "cam", "appendix"]
    lonely = findings({}, [Section("performance", "P", metrics={"not_applicable": "no labels"})])
    assert lonely == []


def test_findings_render_after_the_record_escaped_with_links_and_rules_and_go_to_report_json() -> None:
    record = json.loads(render_json(Report({}, [])))  # an empty report still has the key
    assert record["findings"] == []
    report = Report(_record(), [Section("performance", "Model performance")],
                    [Finding("The weakest class is <b>husky</b> & co.", "performance", 0.5, "lowest F1"),
                     Finding("2 images are duplicates.", "appendix", 1, "same sha256")])
    page = render_html(report)
    assert page.index('id="record"') < page.index('id="findings"') < page.index('id="section-performance"')
    assert "The weakest class is &lt;b&gt;husky&lt;/b&gt; &amp; co." in page and "<b>husky" not in page
    assert '<a href="#section-performance" class="see" title="Model performance">section 1</a>' in page
    assert '<a href="#appendix" class="see" title="Appendix: images, timings and options">appendix</a>' in page
    assert "Rule: lowest F1." in page
    data = json.loads(render_json(report))
    assert data["findings"][0] == {"text": "The weakest class is <b>husky</b> & co.", "section": "performance",
                                   "value": 0.5, "rule": "lowest F1"}


def _record() -> dict[str, Any]:
    """The least of an audit record that the page template reads."""
    return {"auditor_version": "0", "created": "now", "seconds": 1.0, "seed": 0, "command": "auditor run",
            "options": {}, "techniques": [],
            "model": {"name": "m", "kind": "module", "spec": "m", "weights": "as given", "parameters": 1,
                      "state_dict_sha256": "0", "files_sha256": {}, "preprocess": "none", "input_size": [3, 8, 8],
                      "notes": []},
            "images": {"count": 0, "files": [], "skipped": [], "gallery": None},
            "environment": {"device": "cpu", "input_layout": "contiguous", "torch": "2", "torchvision": "0",
                            "python": "3", "platform": "linux"}}


def test_long_lists_of_images_are_cut() -> None:
    result = border_finding(cam(*[(0.0, 0.0)] * 8), NAMES)
    assert "0.png, 1.png, 2.png, 3.png, 4.png and 3 more." in result.text
