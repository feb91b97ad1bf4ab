"""Preprocess beyond a square crop of a shortest-edge resize: (H, W) crops, exact resizes, more filters;
and the guarantee that today's preprocessing (and what the record says about it) is unchanged."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from auditor.inputs.models import LITE0_PREPROCESS
from auditor.inputs.preprocess import Preprocess, disagreement, pattern_image


def old_geometry(resize: int, crop: int, width: int, height: int):
    """Preprocess.geometry before (H, W) crops existed, verbatim."""
    short, long = min(width, height), max(width, height)
    new_short = max(resize, crop)
    new_long = max(new_short, int(new_short * long / short))
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    return size, round((size[0] - crop) / 2.0), round((size[1] - crop) / 2.0)


def test_describe_is_unchanged_for_todays_models():
    assert Preprocess().describe() == ("resize 256 (bilinear), center crop 224, mean (0.485, 0.456, 0.406), "
                                       "std (0.229, 0.224, 0.225)")
    assert LITE0_PREPROCESS.describe() == ("resize 256 (bicubic), center crop 224, mean (0.5, 0.5, 0.5), "
                                           "std (0.5, 0.5, 0.5)")


@pytest.mark.parametrize(("resize", "crop"), [(256, 224), (232, 224), (8, 8), (40, 32), (16, 24)])
def test_square_geometry_is_unchanged(resize, crop):
    preprocess = Preprocess(resize, crop)
    for width, height in itertools.product((1, 7, 16, 33, 100, 257, 640), repeat=2):
        assert preprocess.geometry((width, height)) == old_geometry(resize, crop, width, height)


def test_a_square_pair_is_the_int():
    assert Preprocess(crop=(224, 224)) == Preprocess(crop=224)
    assert Preprocess(crop=(224, 224)).crop == 224
    assert Preprocess(resize=[256, 256], crop=224).resize == 256
    assert Preprocess().crop_size == (224, 224)


def test_a_non_square_crop_matches_torchvision():
    preprocess = Preprocess(resize=200, crop=(160, 192), mean=(0, 0, 0), std=(1, 1, 1))
    image = pattern_image((300, 211))
    reference = T.Compose([T.Resize(200), T.CenterCrop((160, 192)), T.ToTensor()])(image)
    ours = preprocess(image)
    assert ours.shape == (3, 160, 192) and preprocess.display(image).size == (192, 160)
    assert float((ours - reference).abs().max()) < 1e-6
    assert preprocess.describe().startswith("resize 200 (bilinear), center crop 160 x 192, ")


def test_the_crop_always_fits_inside_the_resized_image():
    """A wide crop of a tall image: the short side is scaled up until the crop fits, aspect kept."""
    preprocess = Preprocess(resize=64, crop=(32, 96))
    (width, height), _, _ = preprocess.geometry((50, 200))
    assert width >= 96 and height >= 32 and abs(height / width - 4) < 0.1
    assert preprocess.display(Image.new("RGB", (50, 200))).size == (96, 32)


def test_exact_resize_matches_torchvision():
    preprocess = Preprocess(resize=(40, 48), crop=(32, 40), mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1),
                            interpolation="bicubic", resize_mode="exact")
    image = pattern_image((131, 97))
    reference = T.Compose([T.Resize((40, 48), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((32, 40)),
                           T.ToTensor(), T.Normalize((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))])(image)
    assert float((preprocess(image) - reference).abs().max()) < 1e-5
    assert preprocess.describe().startswith("resize to 40 x 48 (bicubic, aspect not kept), center crop 32 x 40, ")
    assert Preprocess(resize=32, crop=32, resize_mode="exact").describe().startswith(
        "resize to 32 x 32 (bilinear, aspect not kept), no crop, ")


def test_cover_resize_of_a_pair():
    """timm's ResizeKeepRatio for a non-square target: the smallest aspect-keeping size covering both sides."""
    preprocess = Preprocess(resize=(100, 200), crop=(100, 200))
    assert preprocess.geometry((400, 400))[0] == (200, 200)
    assert preprocess.geometry((400, 100))[0] == (400, 100)
    assert preprocess.describe().startswith("resize to cover 100 x 200 (bilinear, aspect kept), center crop 100 x 200")


def test_with_input_size():
    assert Preprocess(256, 224).with_input_size(160) == Preprocess(183, 160)  # as before
    wide = Preprocess(256, 224).with_input_size((160, 240))
    assert wide.crop == (160, 240) and wide.resize == (183, 274)
    exact = Preprocess((32, 32), 32, resize_mode="exact").with_input_size(64)
    assert (exact.resize, exact.crop, exact.resize_mode) == (64, 64, "exact")


@pytest.mark.parametrize("interpolation", ["box", "hamming", "lanczos", "nearest"])
def test_more_filters(interpolation):
    assert Preprocess(interpolation=interpolation)(pattern_image()).shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"interpolation": "area"}, "interpolation must be one of"),
     ({"resize_mode": "fit"}, "resize_mode must be one of"),
     ({"resize": 32, "crop": 40, "resize_mode": "exact"}, "larger than the exact resize"),
     ({"crop": (1, 2, 3)}, "one int or")],
)
def test_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preprocess(**kwargs)


def test_disagreement_names_a_wrong_mean_or_size():
    image = pattern_image()
    right = Preprocess(40, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert disagreement(right, right(image), image) is None
    wrong_mean = Preprocess(40, 32, (0.4, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert "differs from the model's own preprocessing" in disagreement(wrong_mean, right(image), image)
    assert "gives a 3 x 32 x 32 input, auditor's a 3 x 24 x 24 one" in disagreement(
        Preprocess(30, 24), right(image), image)
    assert disagreement(right, torch.zeros(1, 3, 32, 32) + right(image), image) is None
