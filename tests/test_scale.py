"""Large folders: images stream through in batches, and galleries show a bounded sample chosen by a stated rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from auditor.config import RunOptions
from auditor.context import AuditContext
from auditor.errors import AuditorError
from auditor.inputs.images import choose_gallery, decode, load_images
from auditor.inputs.models import LoadedModel
from auditor.inputs.preprocess import Preprocess
from auditor.report.html import render_html
from tests.toolkit import assert_unchanged, audit, snapshot

COLOURS = ["red", "green", "blue"]
PLAIN = Preprocess(resize=8, crop=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class ColourNet(nn.Module):
    """Logits are the image's mean red, green and blue in [0, 1]: the brightest channel wins.

    It records the size of every batch it sees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(3, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(3))
            self.linear.bias.zero_()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.linear(torch.flatten(self.pool(x), 1))


def colour_model() -> LoadedModel:
    return LoadedModel(ColourNet().eval(), PLAIN, list(COLOURS), "ColourNet", "test", "callable", "fixed")


def confidence(rgb: tuple[int, int, int]) -> float:
    """ColourNet's top-1 probability for a solid colour, by hand: the softmax of rgb / 255."""
    exps = [math.exp(c / 255) for c in rgb]
    return max(exps) / sum(exps)


# --- the gallery rule ---------------------------------------------------------------------------------------


def test_all_images_in_file_order_when_they_fit():
    gallery = choose_gallery([0.9, 0.2, 0.5], [True, False, None], 3)
    assert gallery.indices == [0, 1, 2] and gallery.reasons == ["", "", ""]
    assert gallery.rule == "all 3 images, in file order"


def test_misclassified_first_then_least_and_most_confident_alternately():
    confidence_ = [0.9, 0.3, 0.8, 0.3, 0.6, 0.95, 0.95, 0.5, 0.2]
    correct = [True, True, False, True, False, True, True, None, False]
    gallery = choose_gallery(confidence_, correct, 6)
    # mistakes by confidence (2: 0.8, 4: 0.6, 8: 0.2); then least confident of the rest (1 and 3 tie at
    # 0.3: file order gives 1), most confident (5 and 6 tie at 0.95: 5), least (3), most (6)
    assert gallery.indices == [2, 4, 8, 1, 5, 3]
    assert gallery.reasons == ["misclassified"] * 3 + ["least confident", "most confident", "least confident"]
    assert gallery.rule == ("6 of 9 images: misclassified images first (3 shown of 3, the most confident "
                            "mistakes first), then the least and the most confident predictions alternately "
                            "(top-1 probability), ties in file order")


def test_more_mistakes_than_room_shows_the_most_confident_mistakes():
    gallery = choose_gallery([0.4, 0.7, 0.9, 0.5], [False, False, True, False], 2)
    assert gallery.indices == [1, 3] and gallery.reasons == ["misclassified"] * 2
    assert "(2 shown of 3, the most confident mistakes first)" in gallery.rule


def test_without_labels_least_and_most_confident_alternate():
    gallery = choose_gallery([0.5, 0.1, 0.9, 0.4, 0.8], [None] * 5, 3)
    assert gallery.indices == [1, 2, 3]
    assert gallery.reasons == ["least confident", "most confident", "least confident"]
    assert gallery.rule == ("3 of 5 images: the least and the most confident predictions alternately "
                            "(top-1 probability), ties in file order")


# --- streaming ----------------------------------------------------------------------------------------------


@pytest.fixture
def many_images(make_image):
    """300 solid 16 x 12 PNGs, two thirds of them reddish."""
    paths = [make_image(f"many/{i:03d}.png", size=(16, 12), color=(200, i % 3 * 100, 0)) for i in range(300)]
    return paths[0].parent


def test_the_forward_pass_decodes_each_image_once_a_batch_at_a_time(many_images, monkeypatch):
    model = colour_model()
    images = load_images(many_images, model.preprocess)
    decoded = []
    monkeypatch.setattr("auditor.inputs.images.decode", lambda data, **kw: decoded.append(1) or decode(data, **kw))
    # --workers 0: decoded here, where the count sees it (tests/test_scale_out.py: workers give the same tensors)
    ctx = AuditContext(model, images, RunOptions(device="cpu", batch_size=16, workers=0), torch.device("cpu"), {})
    logits = ctx.forward.logits
    assert logits.shape == (300, 3)
    assert len(decoded) == 300  # each file read and decoded once, nothing decoded up front
    assert model.module.batch_sizes == [16] * 18 + [12]  # the model never sees more than one batch
    expected = [[200 / 255, 0, 0], [200 / 255, 100 / 255, 0], [200 / 255, 200 / 255, 0]]  # mean colours, exactly
    assert torch.allclose(logits[:3], torch.tensor(expected), atol=1e-6)
    ctx.photo(7)
    assert len(decoded) == 301  # the pass kept no decoded image: a photo is read again


def test_galleries_sample_while_numbers_count_every_image(make_image):
    # (folder, name, colour): ColourNet predicts the brightest channel
    files = [("blue", "b1", (0, 0, 250)), ("blue", "b2", (200, 0, 100)), ("blue", "b3", (0, 100, 110)),
             ("green", "g1", (0, 250, 0)), ("green", "g2", (100, 110, 100)),
             ("red", "r1", (250, 0, 0)), ("red", "r2", (130, 120, 0)), ("red", "r3", (0, 200, 0))]
    paths = [make_image(f"set/{folder}/{name}.png", size=(16, 12), color=colour) for folder, name, colour in files]
    model = colour_model()
    before = snapshot(model.module)

    report = audit(model, "predictions", images=paths[0].parent.parent, gallery_images=4, batch_size=3)

    # mistakes: r3 (green, p = 0.523) before b2 (red, p = 0.469); then the least confident of the rest,
    # g2 (0.346 < b3's 0.383 < r2's 0.390), then the most confident: b1, g1 and r1 tie, b1 is first in file order
    assert confidence((0, 200, 0)) == pytest.approx(0.523, abs=1e-3)
    assert confidence((200, 0, 100)) == pytest.approx(0.469, abs=1e-3)
    assert confidence((100, 110, 100)) < confidence((0, 100, 110)) < confidence((130, 120, 0))
    gallery = report.record["images"]["gallery"]
    assert gallery["shown"] == ["red/r3.png", "blue/b2.png", "green/g2.png", "blue/b1.png"]
    assert gallery["rule"].startswith("4 of 8 images: misclassified images first (2 shown of 2,")
    section = report.sections[0]
    cards, summary, per_class = section.blocks
    assert [c.title for c in cards.cards] == gallery["shown"]
    assert [c.lines[-1] for c in cards.cards] == ["shown as: misclassified"] * 2 + [
        "shown as: least confident", "shown as: most confident"]
    assert len(summary.rows) == 8 and len(section.metrics["images"]) == 8
    assert section.metrics["accuracy"] == {"labelled_images": 8, "top1": 0.75, "top3": 1.0}  # r3 and b2 wrong
    assert per_class.rows == [["red", 3, 0.667, 1.0], ["green", 2, 1.0, 1.0], ["blue", 3, 0.667, 1.0]]
    html = render_html(report)
    assert "Galleries show 4 of 8 images: misclassified images first" in html
    assert "The cards show 4 of 8 images: misclassified" in html
    assert_unchanged(model.module, before)  # the model comes back as it was given


def test_a_long_image_list_is_folded_in_the_html_and_left_out_of_the_pdf(many_images):
    model = colour_model()
    report = audit(model, "predictions", images=many_images, batch_size=64)
    summary = report.sections[0].blocks[1]
    assert summary.folded and len(summary.rows) == 300
    assert len(report.sections[0].blocks[0].cards) == 6
    html = render_html(report)
    assert "Not printed (300 rows): each image's label folder and sha256" in html
    assert html.count("<tr><td class=\"n\">") == 300  # every image is still listed, behind a fold
    assert len(html) < 500_000


def test_a_file_changed_during_the_run_stops_it_and_leaves_the_model_as_given(many_images, make_image):
    model = colour_model()
    model.module.train()
    model.module.linear.bias.requires_grad_(False)
    before = snapshot(model.module)
    images = load_images(many_images, model.preprocess)
    make_image("many/150.png", size=(16, 12), color=(1, 2, 3))
    with pytest.raises(AuditorError, match="many/150.png changed while the audit ran; run the audit again"):
        audit(model, "predictions", images=images, batch_size=64)
    assert model.module.batch_sizes == [64, 64]  # it stopped at the batch holding the changed file
    assert_unchanged(model.module, before)
