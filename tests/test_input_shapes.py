"""Inputs that are not 3-channel squares: grayscale and RGBA models, non-square input sizes, class-name counts."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from auditor import AuditorError, load_images, load_model
from tests.fixtures_models import tiny
from tests.toolkit import CHEAP, assert_unchanged, audit, snapshot


def small_net(channels: int, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes)).eval()


def test_a_grayscale_model_gets_the_luma_of_each_image(make_image) -> None:
    path = make_image("a.png", size=(32, 32), color=(200, 100, 50))
    loaded = load_model(small_net(1), input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert loaded.preprocess.channels == 1
    assert any("1 input channel" in note and "grayscale" in note for note in loaded.notes)
    x = load_images(path, loaded.preprocess).tensors
    luma = np.asarray(Image.new("RGB", (32, 32), (200, 100, 50)).convert("L"), dtype=np.float32) / 255
    assert x.shape == (1, 1, 32, 32)
    assert torch.allclose(x[0, 0], (torch.from_numpy(luma) - 0.5) / 0.25)
    assert "as grayscale (1 channel)" in loaded.preprocess.describe()


def test_an_rgba_model_keeps_the_alpha_channel(make_image) -> None:
    path = make_image("a.png", size=(32, 32), color=(10, 20, 30, 128), mode="RGBA")
    loaded = load_model(small_net(4), input_size=32)
    x = load_images(path, loaded.preprocess).tensors
    assert x.shape == (1, 4, 32, 32)
    assert torch.allclose(x[0, 3], torch.full((32, 32), 128 / 255))  # alpha in [0, 1], not normalised
    # red 10 of 255, normalised; resizing with alpha may round the colour by one level
    assert torch.allclose(x[0, 0], torch.full((32, 32), (10 / 255 - 0.485) / 0.229), atol=1.5 / 255 / 0.229)


@pytest.mark.parametrize("channels", [1, 4])
def test_every_technique_runs_on_other_channel_counts(channels: int) -> None:
    module = small_net(channels)
    before = snapshot(module)
    report = audit(module, (), top_k=2, **CHEAP)
    assert not report.failed, [(s.technique, s.error) for s in report.failed]
    assert report.record["model"]["input_size"] == [channels, 32, 32]
    assert_unchanged(module, before)


def test_channels_the_model_refuses_name_the_channels_option() -> None:
    with pytest.raises(AuditorError, match=r"^--channels: .* give the number of input channels"):
        audit(load_model(small_net(1), input_size=32, channels=3), "predictions")


def test_a_non_square_input_size_runs_every_technique() -> None:
    module = tiny()
    loaded = load_model(module, input_size=(48, 32))
    assert loaded.preprocess.crop_size == (48, 32)
    assert load_images(None, loaded.preprocess).inputs([0]).shape == (1, 3, 48, 32)
    report = audit(loaded, (), top_k=2, **CHEAP)
    assert not report.failed, [(s.technique, s.error) for s in report.failed]
    assert report.record["model"]["input_size"] == [3, 48, 32]


@pytest.mark.parametrize("names, expected", [(["a", "b"], "outputs 2 to 4 are called 'class i'"),
                                             (list("abcdefg"), "the last names are not used")])
def test_a_labels_file_of_the_wrong_length_is_a_warning_and_a_note(tmp_path: Path, caplog, names, expected) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names))
    with caplog.at_level(logging.WARNING, logger="auditor"):
        report = audit(load_model(tiny(), labels=str(labels), input_size=32), "predictions")
    assert f"the model has 5 outputs but {len(names)} class names were given; {expected}" in caplog.text
    assert any(expected in note for note in report.record["model"]["notes"])
