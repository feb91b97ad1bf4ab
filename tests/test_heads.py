"""Heads: softmax, multi-label sigmoid and binary (one logit), the same for every technique."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from auditor import AuditorError, load_images, load_model
from auditor.inputs.models.heads import Head, choose_head
from auditor.techniques.cam import grad_cam, grad_cam_pp
from tests.fixtures_models import tiny
from tests.toolkit import CHEAP, assert_unchanged, audit, snapshot


def test_auto_chooses_by_outputs_and_config() -> None:
    assert choose_head("auto", 10, binary=False, multi_label=False).kind == "softmax"
    assert choose_head("auto", 10, binary=False, multi_label=True).kind == "sigmoid"
    assert choose_head("sigmoid", 10, binary=False, multi_label=False).kind == "sigmoid"
    assert choose_head("softmax", 10, binary=False, multi_label=True).kind == "softmax"  # the flag wins
    assert choose_head("auto", 2, binary=True, multi_label=False).kind == "binary"
    assert choose_head("sigmoid", 2, binary=True, multi_label=False).kind == "binary"
    with pytest.raises(AuditorError, match="--head softmax: the model returns one score"):
        choose_head("softmax", 2, binary=True, multi_label=False)


def test_each_head_predicts_by_its_rule() -> None:
    logits = torch.tensor([[2.0, 1.0, -3.0], [-1.0, -2.0, 0.5]])
    softmax, sigmoid = Head("softmax"), Head("sigmoid", threshold=0.6)
    assert torch.allclose(softmax.probabilities(logits).sum(dim=1), torch.ones(2))
    assert softmax.predicted(softmax.probabilities(logits)) == [[0], [2]]
    # sigmoid(2) = 0.88, sigmoid(1) = 0.73, sigmoid(0.5) = 0.62: every label at or above 0.6, most probable first
    assert sigmoid.predicted(sigmoid.probabilities(logits)) == [[0, 1], [2]]
    assert Head("sigmoid", threshold=0.7).predicted(sigmoid.probabilities(logits)) == [[0, 1], []]
    binary = Head("binary", threshold=0.3)
    z = torch.tensor([[-0.5], [-1.0]])  # sigmoid: 0.38 and 0.27
    assert binary.predicted(binary.probabilities(torch.cat([-z, z], 1))) == [[1], [0]]


@pytest.fixture
def binary(tmp_path: Path):
    """A one-logit model with named classes: "healthy, sick" makes sick the positive class."""
    labels = tmp_path / "labels.txt"
    labels.write_text("healthy\nsick\n")
    module = tiny(num_classes=1)
    return module, load_model(module, labels=str(labels), input_size=32)


def test_binary_probability_is_the_sigmoid_of_the_one_logit(binary) -> None:
    module, loaded = binary
    assert loaded.binary and loaded.class_names == ["healthy", "sick"]
    report = audit(loaded, "predictions", top_k=2)
    x = load_images(None, loaded.preprocess).tensors
    with torch.no_grad():
        sick = torch.sigmoid(module(x)[:, 0])  # by hand, from the user's own module
    for entry, p in zip(report.sections[0].metrics["images"], sick.tolist()):
        probabilities = {top["class"]: top["probability"] for top in entry["top"]}
        assert probabilities["sick"] == pytest.approx(p, abs=1e-5)
        assert probabilities["healthy"] == pytest.approx(1 - p, abs=1e-5)
    assert "binary" in report.sections[0].text


def test_binary_cam_explains_the_negative_class_with_minus_z(binary) -> None:
    module, loaded = binary

    class Negated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -module(x)

    x = load_images(None, loaded.preprocess).tensors
    healthy = torch.zeros(len(x), dtype=torch.long)
    layer = module.features[3]  # the last convolution, the same object through the adapter
    for method in (grad_cam, grad_cam_pp):
        ours = method(loaded.module, layer, x, healthy)
        by_hand = method(Negated(), layer, x, torch.zeros(len(x), dtype=torch.long))
        assert torch.allclose(ours, by_hand, atol=1e-5)
        assert torch.allclose(method(loaded.module, layer, x, healthy + 1), method(module, layer, x, healthy),
                              atol=1e-5)  # the positive class is z itself


def test_every_technique_runs_on_binary_and_multi_label_heads(binary) -> None:
    module, loaded = binary
    before = snapshot(module)
    report = audit(loaded, (), top_k=2, **CHEAP)
    assert not report.failed, [(s.technique, s.error) for s in report.failed]
    assert_unchanged(module, before)
    multi = tiny(num_classes=4)
    report = audit(multi, (), head="sigmoid", top_k=3, **CHEAP)
    assert not report.failed, [(s.technique, s.error) for s in report.failed]
    assert report.record["options"]["head"] == "sigmoid"


def test_multi_label_probabilities_are_independent_sigmoids() -> None:
    module = tiny(num_classes=4)
    report = audit(module, "predictions", head="sigmoid", threshold=0.4, top_k=4)
    loaded = load_model(module, input_size=32)
    x = load_images(None, loaded.preprocess).tensors
    with torch.no_grad():
        expected = torch.sigmoid(module(x))
    for entry, row in zip(report.sections[0].metrics["images"], expected):
        probabilities = [top["probability"] for top in sorted(entry["top"], key=lambda t: t["class"])]
        assert probabilities == pytest.approx(row.tolist(), abs=1e-5)


def test_a_binary_threshold_decides_the_predicted_class_everywhere(binary, tmp_path: Path) -> None:
    """With --threshold 0.05 every image is 'sick' (P(sick) > 0.05), though most are more probably healthy."""
    module, loaded = binary
    for name in ("healthy", "sick"):
        (tmp_path / name).mkdir()
    for i, photo in enumerate(sorted(Path(load_images(None).paths[0]).parent.glob("*.png"))[:4]):
        (tmp_path / ("healthy" if i % 2 else "sick") / photo.name).write_bytes(photo.read_bytes())
    report = audit(loaded, ("predictions", "performance"), images=tmp_path, threshold=0.05)
    performance = next(s for s in report.sections if s.technique == "performance")
    assert performance.error is None and "confusion_matrix" in performance.metrics, (performance.error, performance.notes)
    performance = performance.metrics
    assert performance["confusion_matrix"]["counts"] == [[0, 2], [0, 2]]  # rows true healthy, sick
    predictions = next(s for s in report.sections if s.technique == "predictions").metrics
    assert predictions["accuracy"]["top1"] == 0.5
