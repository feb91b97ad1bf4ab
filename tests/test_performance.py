"""The performance section: scores equal a hand computation and scikit-learn on a model whose logits are
known in closed form; running counts stream; the report.json contract; the no-labels case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from torch import nn

from auditor import LoadedModel, load_images, load_model
from auditor.document import Figure, Report, Section, Table
from auditor.report.html import render_html
from auditor.report.manifest import render_json
from auditor.techniques.performance import (
    CONFIDENT,
    Counts,
    calibration_verdict,
    matrix_classes,
    most_confused,
    pair_examples,
    summarise,
)
from tests import toolkit

CLASSES = ["red", "green", "blue"]
SCALE = 6.0  # logits = SCALE * mean colour in [0, 1]
# folder -> the solid colours of its images; the model predicts the strongest channel
FOLDERS = {
    "red": [(230, 20, 20), (200, 40, 30), (30, 220, 40), (40, 210, 30)],  # two predicted green
    "green": [(20, 230, 20), (220, 30, 20), (20, 20, 230)],  # one red, one blue
    "blue": [(25, 20, 230)],
}
# by hand: rows true (red, green, blue), columns predicted
CONFUSION = [[2, 2, 0], [1, 1, 1], [0, 0, 1]]


class MeanColour(nn.Module):
    """Logits SCALE * (r, g, b), the image's mean colour: a 1x1 identity conv (a spatial layer for Grad-CAM),
    global average pooling and a fixed linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3)[:, :, None, None])
            self.head.weight.copy_(SCALE * torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def write_folder(root: Path, folders: dict[str, list[tuple[int, int, int]]]) -> Path:
    for folder, colours in folders.items():
        for i, colour in enumerate(colours):
            path = root / folder / f"{i}.png" if folder else root / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), colour).save(path)
    return root


def colour_model(classes: list[str] = CLASSES) -> LoadedModel:
    """MeanColour on 16 px inputs, unnormalised, with `classes` for names."""
    model = load_model(MeanColour(), input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    model.class_names = list(classes)
    return model


def audit(root: Path, techniques: tuple[str, ...] = ("performance",), classes: list[str] = CLASSES,
          top_k: int = 2, head: str = "auto", **settings) -> Report:
    return toolkit.audit(colour_model(classes), techniques, images=root, top_k=top_k, head=head, **settings)


def expected(folders: dict[str, list[tuple[int, int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """True class indices and probabilities [N, 3] in file order, computed here from the colours."""
    rows = sorted((folder, f"{i}.png", colour)
                  for folder, colours in folders.items() for i, colour in enumerate(colours))
    truth = np.array([CLASSES.index(folder) for folder, _, _ in rows])
    logits = SCALE * np.array([colour for _, _, colour in rows], dtype=np.float64) / 255.0
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    return truth, probabilities / probabilities.sum(axis=1, keepdims=True)


def guo_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Guo et al. (2017), written out: bins ((m-1)/M, m/M], |acc - conf| weighted by the bin's share."""
    total = 0.0
    for m in range(1, bins + 1):
        inside = (confidence > (m - 1) / bins) & (confidence <= m / bins)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


@pytest.fixture(scope="module")
def colour_report(tmp_path_factory) -> Report:
    return audit(write_folder(tmp_path_factory.mktemp("colours"), FOLDERS))


def section_of(report: Report, name: str = "performance") -> Section:
    (section,) = [s for s in report.sections if s.technique == name]
    assert section.error is None, section.error_detail
    return section


def test_scores_equal_a_hand_computation_and_scikit_learn(colour_report) -> None:
    metrics = section_of(colour_report).metrics
    truth, probabilities = expected(FOLDERS)
    predicted = probabilities.argmax(axis=1)
    assert metrics["confusion_matrix"] == {"classes": CLASSES, "counts": CONFUSION}
    assert metrics["confusion_matrix"]["counts"] == confusion_matrix(truth, predicted).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    by_class = {c["class"]: c for c in metrics["per_class"]}
    assert [c["class"] for c in metrics["per_class"]] == CLASSES
    for i, name in enumerate(CLASSES):
        assert by_class[name]["precision"] == pytest.approx(precision[i])
        assert by_class[name]["recall"] == pytest.approx(recall[i])
        assert by_class[name]["f1"] == pytest.approx(f1[i])
        assert by_class[name]["support"] == support[i]
    assert by_class["red"]["precision"] == pytest.approx(2 / 3) and by_class["green"]["recall"] == pytest.approx(1 / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 8)
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert metrics["weighted_f1"] == pytest.approx(f1_score(truth, predicted, average="weighted"))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    top2 = np.argsort(-probabilities, axis=1)[:, :2]
    assert metrics["top_k"] == 2
    assert metrics["top_k_accuracy"] == pytest.approx(np.mean([t in row for t, row in zip(truth, top2)]))
    confidence = probabilities.max(axis=1)
    assert metrics["ece"] == pytest.approx(guo_ece(confidence, predicted == truth), rel=1e-5)
    assert metrics["mean_confidence"] == pytest.approx(confidence.mean(), rel=1e-5)
    assert metrics["calibration"] == "over-confident"
    assert len(metrics["ece_bins"]) == 15 and sum(b["count"] for b in metrics["ece_bins"]) == 8
    assert metrics["most_confused"][0] == {"true": "red", "predicted": "green", "count": 2}
    assert [(m["true"], m["predicted"], m["count"]) for m in metrics["most_confused"]] == [
        ("red", "green", 2), ("green", "red", 1), ("green", "blue", 1)]


def test_the_section_shows_the_matrix_tables_calibration_and_pairs_with_their_maps(colour_report) -> None:
    section = section_of(colour_report)
    keys = [b.key for b in section.blocks]
    assert keys[:4] == ["performance-confusion", "performance-per-class", "performance-reliability",
                        "performance-confused"]
    assert [k for k in keys if k.startswith("performance-pair-")] == ["performance-pair-1", "performance-pair-2",
                                                                     "performance-pair-3"]
    matrix = section.blocks[0]
    assert isinstance(matrix, Figure) and matrix.mime == "image/svg+xml" and b"<script" not in matrix.data
    per_class = section.blocks[1]
    assert isinstance(per_class, Table)
    assert [row[0] for row in per_class.rows] == ["green", "red", "blue"]  # worst first
    assert per_class.rows[1][-1] == "green (2)"  # red is most often predicted green
    assert section.metrics["examples"][0] == {"true": "red", "predicted": "green", "images": ["red/2.png",
                                                                                            "red/3.png"]}
    assert [len(e["images"]) for e in section.metrics["examples"]] == [2, 1, 1]  # two at most (the default)
    mistakes = section.metrics["confident_mistakes"]
    assert mistakes["threshold"] == CONFIDENT and mistakes["count"] == 4
    assert "over-confident" in section.text and "top-2 accuracy" in section.text


def test_report_json_carries_the_contract_and_the_findings(colour_report) -> None:
    data = json.loads(render_json(colour_report))
    (metrics,) = [s["metrics"] for s in data["sections"] if s["technique"] == "performance"]
    assert set(metrics["confusion_matrix"]) == {"classes", "counts"}
    assert set(metrics["per_class"][0]) >= {"class", "precision", "recall", "f1", "support"}
    assert isinstance(metrics["ece"], float) and {"low", "high", "count", "confidence", "accuracy"} <= set(
        metrics["ece_bins"][0])
    assert set(metrics["most_confused"][0]) == {"true", "predicted", "count"}
    assert {"accuracy", "top_k_accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"} <= set(metrics)
    findings = data["findings"]
    assert findings and all({"text", "section", "value"} <= set(f) for f in findings)
    assert findings[0]["section"] == "performance" and findings[0]["value"] == pytest.approx(0.5)
    assert "weakest class is green" in findings[0]["text"]
    assert "red → green: 2 images" in findings[1]["text"]


def test_a_folder_without_labels_gives_a_section_saying_why(tmp_path) -> None:
    report = audit(write_folder(tmp_path, {"": [(200, 20, 20)], "mystery": [(20, 200, 20)]}))
    section = section_of(report)
    assert not section.blocks and "not_applicable" in section.metrics
    assert "no image has a known class" in section.notes[0] and "labels 'mystery' match" in section.notes[0]
    assert not [f for f in report.findings if f.section == "performance"]


def test_unmatched_folders_are_named_and_not_counted(tmp_path) -> None:
    report = audit(write_folder(tmp_path, {**FOLDERS, "mystery": [(90, 90, 90)]}))
    section = section_of(report)
    assert section.metrics["labelled_images"] == 8 and section.metrics["unlabelled_images"] == 1
    assert any("“mystery” (1 image)" in note for note in section.notes)
    assert "the 8 of 9 images with a known class" in section.text


def test_beyond_the_limit_the_matrix_shows_the_classes_with_most_errors_and_says_so(tmp_path) -> None:
    section = section_of(audit(write_folder(tmp_path, FOLDERS), matrix_classes=2, confused_examples=0))
    # errors (row and column, off the diagonal): red 2 + 1, green 2 + 2, blue 0 + 1
    assert section.metrics["matrix_shown"]["classes"] == ["red", "green"]
    assert "the 2 of 3 classes with the most errors" in section.metrics["matrix_shown"]["rule"]
    assert "the 2 of 3 classes with the most errors" in section.blocks[0].caption
    assert section.metrics["confusion_matrix"]["counts"] == CONFUSION  # the JSON keeps the whole matrix
    assert not [b for b in section.blocks if b.key.startswith("performance-pair")]


def test_user_supplied_class_names_are_escaped_in_the_page(tmp_path) -> None:
    odd = ["a<b>&c", "$x$ two", "blue"]
    report = audit(write_folder(tmp_path, {odd[0]: FOLDERS["red"], odd[1]: FOLDERS["green"]}),
                   techniques=("performance",), classes=odd)
    section_of(report)
    page = render_html(report)
    assert "a<b>" not in page and "a&lt;b&gt;&amp;c" in page


def test_counts_by_hand_ece_top_k_and_the_confident_threshold() -> None:
    counts = Counts(3, k=2).add([0, 1, 2, None], [[0, 1], [0, 1], [2, 0], [1, 2]],
                                [[0.95, 0.04], [0.95, 0.03], [0.55, 0.4], [0.99, 0.01]])
    result = summarise(counts)
    assert counts.labelled == 3 and counts.unlabelled == 1
    assert result.accuracy == pytest.approx(2 / 3) and result.top_k_accuracy == pytest.approx(1.0)
    # bin (14/15, 1]: 2 images, confidence 0.95, accuracy 0.5; bin (8/15, 9/15]: 1 image, 0.55, accuracy 1
    assert result.ece == pytest.approx(2 / 3 * 0.45 + 1 / 3 * 0.45)
    assert [b.count for b in result.bins if b.count] == [1, 2]
    assert counts.confident_mistakes == 1 and counts.most_confident_mistakes() == [(1, 1, 0, 0.95)]
    below = Counts(2).add([0, 0], [1, 1], [CONFIDENT - 0.01, CONFIDENT])
    assert below.confident_mistakes == 1 and below.most_confident_mistakes()[0][0] == 1


def test_calibration_words_on_both_sides_of_the_tolerance() -> None:
    assert calibration_verdict(0.80, 0.74) == "over-confident"
    assert calibration_verdict(0.80, 0.76) == "calibrated"
    assert calibration_verdict(0.76, 0.80) == "calibrated"
    assert calibration_verdict(0.74, 0.80) == "under-confident"


def test_counts_stream_batch_by_batch_and_shard_by_shard_to_the_same_numbers() -> None:
    rng = np.random.default_rng(0)
    n, classes, k = 301, 7, 3
    probabilities = rng.dirichlet(np.full(classes, 0.3), size=n)
    labels: list[int | None] = [int(v) if v < classes else None for v in rng.integers(0, classes + 1, size=n)]
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    top_p = np.take_along_axis(probabilities, top, axis=1)
    whole = Counts(classes, k).add(labels, top, top_p)
    batched = Counts(classes, k)
    for start in range(0, n, 17):
        batched.add(labels[start:start + 17], top[start:start + 17], top_p[start:start + 17], start)
    shards = Counts(classes, k).add(labels[:150], top[:150], top_p[:150]) + \
        Counts(classes, k).add(labels[150:], top[150:], top_p[150:], 150)
    for other in (batched, shards):
        assert np.array_equal(other.confusion, whole.confusion) and other.top_k_hits == whole.top_k_hits
        assert np.array_equal(other.bin_count, whole.bin_count)
        assert np.allclose(other.bin_confidence, whole.bin_confidence)
        assert other.most_confident_mistakes() == whole.most_confident_mistakes()
        assert summarise(other).ece == pytest.approx(summarise(whole).ece)
    known = [i for i, label in enumerate(labels) if label is not None]
    truth, predicted = np.array([labels[i] for i in known]), top[known, 0]
    assert np.array_equal(whole.confusion, confusion_matrix(truth, predicted, labels=range(classes)))
    assert summarise(whole).balanced_accuracy == pytest.approx(balanced_accuracy_score(truth, predicted))


def test_most_confused_matrix_classes_and_pair_examples() -> None:
    confusion = np.array([[5, 3, 0, 0], [0, 4, 0, 1], [3, 0, 2, 0], [0, 0, 0, 9]])
    assert most_confused(confusion) == [(0, 1, 3), (2, 0, 3), (1, 3, 1)]
    assert most_confused(confusion, 1) == [(0, 1, 3)]
    assert matrix_classes(confusion, 4) == [0, 1, 2, 3]
    assert matrix_classes(confusion, 2) == [0, 1]  # errors: 0: 3 + 3, 1: 1 + 3, 2: 3, 3: 1
    labels = [0, 0, 0, 1, None]
    assert pair_examples(labels, [1, 1, 0, 1, 1], [0.6, 0.9, 0.99, 0.5, 0.99], [(0, 1), (1, 0)], 5) == [[1, 0], []]


def test_labels_from_a_csv_count_as_folder_labels_and_several_labels_are_noted(tmp_path) -> None:
    folders = write_folder(tmp_path / "images", FOLDERS)
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = ["image,class"]
    for path in sorted(folders.rglob("*.png")):
        name = f"{path.parent.name}-{path.name}"
        (flat / name).write_bytes(path.read_bytes())
        rows.append(f"{name},{path.parent.name}")
    rows.append("red-0.png,green")  # a second true class: scored against the first
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    model = colour_model()
    images = load_images(flat, model.preprocess, model.class_names, tmp_path / "labels.csv")
    report = toolkit.audit(model, "performance", images=images, top_k=2, confused_examples=0)
    section = section_of(report)
    assert section.metrics["confusion_matrix"] == {"classes": CLASSES, "counts": CONFUSION}
    assert any("1 image has several true classes" in note for note in section.notes)


def test_a_sigmoid_head_is_scored_per_label_as_scikit_learn_does(tmp_path) -> None:
    from sklearn.metrics import average_precision_score

    root = write_folder(tmp_path, FOLDERS)
    # two images get a second true label: a multi-label ground truth
    (tmp_path / "labels.csv").write_text("image,class\nred/2.png,red\nred/2.png,green\ngreen/1.png,green\n"
                                         "green/1.png,red\n")
    model = colour_model(CLASSES)
    images = load_images(root, model.preprocess, model.class_names, tmp_path / "labels.csv")
    report = toolkit.audit(model, "performance", images=images, head="sigmoid", threshold=0.9)
    metrics = section_of(report).metrics
    x = images.tensors
    with torch.no_grad():
        probabilities = torch.sigmoid(model.module(x)).numpy()
    truth = np.zeros_like(probabilities, dtype=int)
    for row, labels in enumerate(images.label_sets):
        truth[row, list(labels)] = 1
    said = (probabilities >= 0.9).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(truth, said, zero_division=0)
    ap = average_precision_score(truth, probabilities, average=None)
    by_label = {entry["class"]: entry for entry in metrics["per_label"]}
    for c, name in enumerate(CLASSES):
        entry = by_label[name]
        assert (entry["precision"], entry["recall"], entry["f1"], entry["support"]) == pytest.approx(
            (precision[c], recall[c], f1[c], support[c]))
        assert entry["average_precision"] == pytest.approx(ap[c])
    assert metrics["mean_average_precision"] == pytest.approx(float(np.mean(ap)))
    assert metrics["macro_f1"] == pytest.approx(float(np.mean(f1)))
    assert metrics["exact_match"] == pytest.approx(float(np.mean((truth == said).all(axis=1))))


def test_average_precision_with_ties_and_no_positives() -> None:
    from sklearn.metrics import average_precision_score

    from auditor.techniques.performance import average_precision

    scores = np.array([0.9, 0.8, 0.8, 0.8, 0.3, 0.1])
    positive = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    assert average_precision(scores, positive) == pytest.approx(average_precision_score(positive, scores))
    assert np.isnan(average_precision(scores, np.zeros(6, dtype=bool)))


def test_pair_examples_come_from_one_cam_call_within_the_batch_size(tmp_path, monkeypatch) -> None:
    from auditor.sections import performance

    calls: list[int] = []
    original = performance.cam_maps
    monkeypatch.setattr(performance, "cam_maps", lambda model, x, *a, **k: calls.append(len(x)) or original(
        model, x, *a, **k))
    audit(write_folder(tmp_path, FOLDERS))
    assert calls == [4]  # 2 + 1 + 1 images of the three pairs, one batch
