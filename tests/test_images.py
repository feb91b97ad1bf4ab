"""Image loading: every file kind, corrupt files, label folders, preprocessing and hashes."""

from __future__ import annotations

import hashlib
import logging
import os
import re

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, features

from auditor.errors import AuditorError
from auditor.inputs.images import (
    BUNDLED_PHOTOS,
    decode,
    find_image_files,
    load_images,
    match_label,
)
from auditor.inputs.models import imagenet_class_names
from auditor.inputs.preprocess import Preprocess

COLOR = (200, 100, 50)


def decoded(path) -> Image.Image:
    image = decode(path.read_bytes())
    assert image.mode == "RGB"
    return image


def close_to(pixel, expected, tolerance: int) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected))


# --- each kind of image file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "tolerance", "save_options"),
    [
        (".jpg", 6, {"quality": 95}),
        (".jpeg", 6, {"quality": 95}),
        (".png", 0, {}),
        pytest.param(".webp", 6, {"quality": 95},
                     marks=pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")),
        (".bmp", 0, {}),
        (".tiff", 0, {}),
        (".tif", 0, {"compression": "tiff_lzw"}),
        (".gif", 0, {}),
    ],
)
def test_each_format_decodes_to_rgb(make_image, suffix, tolerance, save_options):
    path = make_image(f"photo{suffix}", size=(64, 48), color=COLOR, **save_options)
    image = decoded(path)
    assert image.size == (64, 48)
    assert close_to(image.getpixel((32, 24)), COLOR, tolerance)


def test_folder_of_every_format_loads(make_image):
    suffixes = [".jpg", ".png", ".webp", ".bmp", ".tiff", ".gif"]
    for suffix in suffixes:
        make_image(f"photos/a{suffix}", size=(80, 60))
    make_image("photos/UPPER.JPG", size=(80, 60))
    (make_image("photos/a.png").parent / "notes.txt").write_text("not an image")
    images = load_images(make_image("photos/a.png").parent)
    assert images.names == sorted(["UPPER.JPG", *(f"a{s}" for s in suffixes)])
    assert images.tensors.shape == (7, 3, 224, 224)
    assert images.skipped == []
    assert len(images) == 7


def test_animated_gif_uses_the_first_frame(make_image):
    red = Image.new("RGB", (16, 12), (255, 0, 0))
    blue = Image.new("RGB", (16, 12), (0, 0, 255))
    path = make_image("anim.gif", image=red, save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(path) as check:  # the file really is animated, with a blue second frame
        assert check.n_frames == 2
        check.seek(1)
        assert check.convert("RGB").getpixel((8, 6)) == (0, 0, 255)
    image = decoded(path)
    assert image.size == (16, 12)
    assert image.getpixel((8, 6)) == (255, 0, 0)


def test_grayscale_becomes_three_equal_channels(make_image):
    path = make_image("gray.png", mode="L", color=77)
    assert decoded(path).getpixel((3, 3)) == (77, 77, 77)


def test_rgba_transparency_is_composited_on_white(make_image):
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    image.putpixel((1, 1), (255, 0, 0, 255))
    image.putpixel((2, 2), (0, 0, 0, 128))  # half-transparent black over white: mid grey
    image.putpixel((3, 3), (10, 20, 30, 0))  # transparent, whatever its colour
    result = decoded(make_image("rgba.png", image=image))
    assert result.getpixel((0, 0)) == (255, 255, 255)
    assert result.getpixel((3, 3)) == (255, 255, 255)
    assert result.getpixel((1, 1)) == (255, 0, 0)
    assert close_to(result.getpixel((2, 2)), (127, 127, 127), 1)


def test_la_transparency_is_composited_on_white(make_image):
    image = Image.new("LA", (8, 8), (0, 0))
    image.putpixel((1, 1), (40, 255))
    result = decoded(make_image("la.png", image=image))
    assert result.getpixel((0, 0)) == (255, 255, 255)
    assert result.getpixel((1, 1)) == (40, 40, 40)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_is_composited_on_white(make_image, suffix):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 200, 0, 30, 60, 90] + [0, 0, 0] * 253)
    image.putpixel((1, 1), 1)
    image.putpixel((2, 2), 2)
    path = make_image(f"palette{suffix}", image=image, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    result = decoded(path)
    assert result.getpixel((0, 0)) == (255, 255, 255)  # palette index 0 is transparent
    assert result.getpixel((1, 1)) == (0, 200, 0)
    assert result.getpixel((2, 2)) == (30, 60, 90)


def test_palette_without_transparency_keeps_its_colours(make_image):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0, 0, 0] * 254)
    image.putpixel((1, 1), 1)
    result = decoded(make_image("palette.bmp", image=image))
    assert result.getpixel((0, 0)) == (0, 0, 0)
    assert result.getpixel((1, 1)) == (0, 200, 0)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_colour_key_transparency_is_composited_on_white(make_image, mode):
    key = 200 if mode == "L" else (1, 2, 3)
    other = 10 if mode == "L" else (10, 20, 30)
    image = Image.new(mode, (8, 8), other)
    image.putpixel((0, 0), key)
    result = decoded(make_image(f"trns-{mode}.png", image=image, transparency=key))
    assert result.getpixel((0, 0)) == (255, 255, 255)
    assert result.getpixel((1, 1)) == ((10, 10, 10) if mode == "L" else (10, 20, 30))


def test_16_bit_grayscale_is_scaled_not_clipped(make_image):
    values = np.array([[0, 32768, 65535, 4096]], dtype=np.uint16).repeat(4, axis=0)
    path = make_image("deep.png", image=Image.fromarray(values))
    with Image.open(path) as check:
        assert check.mode == "I;16"
    result = np.asarray(decoded(path))
    assert result.shape == (4, 4, 3)
    assert result[0, :, 0].tolist() == [0, 128, 255, 16]
    assert (result[..., 0] == result[..., 1]).all() and (result[..., 1] == result[..., 2]).all()


def test_float_image_is_rescaled_to_its_own_range(make_image):
    values = np.array([[-1.0, 0.0, 1.0, 3.0]], dtype=np.float32).repeat(2, axis=0)
    path = make_image("float.tiff", image=Image.fromarray(values, mode="F"))
    result = np.asarray(decoded(path))
    assert result[0, :, 0].tolist() == [0, 64, 128, 255]


# EXIF orientation: how a stored image's top-left corner must turn to stand upright
_ORIENTATIONS = {
    3: ("bottom-right", False),  # rotated 180 degrees
    6: ("top-right", True),  # rotated 90 degrees clockwise to display
    8: ("bottom-left", True),  # rotated 90 degrees counter-clockwise to display
}


@pytest.mark.parametrize("orientation", sorted(_ORIENTATIONS))
def test_exif_rotation_is_applied(make_image, orientation):
    width, height = 60, 30
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 12, 12))  # a red top-left corner, as stored
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = make_image(f"rotated{orientation}.jpg", image=image, exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (width, height)
        assert raw.getexif()[0x0112] == orientation

    result = decoded(path)
    corner, swapped = _ORIENTATIONS[orientation]
    assert result.size == ((height, width) if swapped else (width, height))
    w, h = result.size
    corners = {"top-left": (3, 3), "top-right": (w - 4, 3), "bottom-left": (3, h - 4), "bottom-right": (w - 4, h - 4)}
    for name, xy in corners.items():
        expected = (255, 0, 0) if name == corner else (255, 255, 255)
        assert close_to(result.getpixel(xy), expected, 12), (name, result.getpixel(xy))


# --- unreadable files and paths -------------------------------------------------------------------------------


def test_corrupt_files_are_skipped_with_a_reason(make_image, caplog):
    folder = make_image("set/good.png").parent
    make_image("set/also-good.jpg")
    (folder / "bad.jpg").write_bytes(np.random.default_rng(0).bytes(2048))
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    whole = make_image("whole.jpg", image=noise, quality=90).read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.png").write_bytes(b"")

    with caplog.at_level(logging.WARNING, logger="auditor.inputs.images"):
        images = load_images(folder)
    assert images.names == ["also-good.jpg", "good.png"]
    assert images.tensors.shape == (2, 3, 224, 224)
    assert [name for name, _ in images.skipped] == ["bad.jpg", "empty.png", "truncated.jpg"]
    for name, reason in images.skipped:
        assert reason and "\n" not in reason
        assert name in caplog.text
    assert dict(images.skipped)["bad.jpg"] == "not a recognised image format, or a damaged file"
    assert "truncated" in dict(images.skipped)["truncated.jpg"]


def test_folder_of_only_corrupt_files_is_an_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(os.urandom(500))
    (tmp_path / "worse.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    with pytest.raises(AuditorError) as error:
        load_images(tmp_path)
    message = str(error.value)
    assert "none of the files could be read" in message
    assert "bad.jpg" in message and "worse.png" in message


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    (tmp_path / "sub").mkdir()
    with pytest.raises(AuditorError, match="no image files"):
        load_images(tmp_path)


def test_missing_path_is_an_error(tmp_path, make_image):
    with pytest.raises(AuditorError, match=re.escape(f"{tmp_path / 'nope'} does not exist")):
        load_images([make_image("ok.png"), tmp_path / "nope"])


# --- files, folders and labels -------------------------------------------------------------------------------


@pytest.fixture
def labelled_folder(make_image):
    make_image("root/cat/x.png")
    make_image("root/cat/sub/deep.png")
    make_image("root/dog/y.png")
    make_image("root/bird/z.png")
    return make_image("root/w.png").parent


def test_imagefolder_labels(labelled_folder):
    images = load_images(labelled_folder, class_names=["cat", "dog"])
    assert images.names == ["bird/z.png", "cat/sub/deep.png", "cat/x.png", "dog/y.png", "w.png"]
    assert images.labels == [None, 0, 0, 1, None]
    assert images.label_names == ["bird", "cat", "cat", "dog", None]
    assert images.has_labels


def test_label_folders_without_class_names(labelled_folder):
    images = load_images(labelled_folder)
    assert images.labels == [None] * 5
    assert images.label_names == ["bird", "cat", "cat", "dog", None]
    assert not images.has_labels


def test_discover_given_files_and_folders(labelled_folder):
    found = find_image_files([labelled_folder / "cat" / "x.png", labelled_folder / "dog"])
    assert found == [
        (labelled_folder / "cat" / "x.png", "x.png", None),  # a file given directly has no label
        (labelled_folder / "dog" / "y.png", "y.png", None),  # directly inside the folder given
    ]


def test_imagenet_names_match_folder_spellings(make_image):
    make_image("val/tiger_cat/1.png")
    make_image("val/Egyptian Cat/2.png")
    make_image("val/tabby/3.png")
    folder = make_image("val/285/4.png").parent.parent
    images = load_images(folder, class_names=imagenet_class_names())
    assert images.label_names == ["285", "Egyptian Cat", "tabby", "tiger_cat"]
    assert images.labels == [285, 285, 281, 282]


@pytest.mark.parametrize(
    ("folder", "class_names", "expected"),
    [
        ("tiger_cat", ["tabby", "tiger cat"], 1),
        ("tiger cat", ["tabby", "tiger_cat"], 1),
        ("Tiger_Cat", ["tabby", "tiger cat"], 1),
        ("TABBY", ["tabby", "tiger cat"], 0),
        ("dog", ["Dog", "dog"], 0),
        ("1", ["a", "b"], 1),
        ("2", ["a", "b"], None),
        ("lion", ["tabby", "tiger cat"], None),
        ("tigercat", ["tabby", "tiger cat"], None),
        ("cat", [], None),
    ],
)
def test_match_label(folder, class_names, expected):
    assert match_label(folder, class_names) == expected


# --- tensors, crops and hashes ------------------------------------------------------------------------------


def test_tensors_are_normalized_as_the_preprocess_says(make_image):
    preprocess = Preprocess(resize=32, crop=16, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.1))
    images = load_images(make_image("solid.png", size=(300, 200), color=COLOR), preprocess)
    x = images.inputs([0])
    assert x.shape == (1, 3, 16, 16)
    assert x.dtype == torch.float32
    expected = [(200 / 255 - 0.5) / 0.25, (100 / 255 - 0.4) / 0.2, (50 / 255 - 0.3) / 0.1]
    assert x[0, :, 7, 9].tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(x[0], torch.tensor(expected).view(3, 1, 1).expand(3, 16, 16), atol=1e-6)
    assert images.photo(0).size == (16, 16) and images.photo(0).mode == "RGB"
    assert images.photo(0).getpixel((0, 0)) == COLOR
    assert torch.allclose(preprocess.denormalize(x[0])[:, 0, 0],
                          torch.tensor(COLOR, dtype=torch.float32) / 255, atol=1e-6)


def test_center_crop_geometry_by_hand(make_image):
    # 100 x 50: red columns 0-49, blue columns 50-99. Resize 50 keeps the size; the 50 x 50 crop starts
    # at column 25, so its left half is red and its right half blue.
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 0, 255), (50, 0, 100, 50))
    preprocess = Preprocess(resize=50, crop=50, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="nearest")
    images = load_images(make_image("halves.png", image=image), preprocess)
    tensor = images.tensors[0]
    assert tensor.shape == (3, 50, 50)
    assert tensor[:, 10, 0].tolist() == [1.0, 0.0, 0.0]
    assert tensor[:, 10, 24].tolist() == [1.0, 0.0, 0.0]
    assert tensor[:, 10, 25].tolist() == [0.0, 0.0, 1.0]
    assert tensor[:, 10, 49].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("weights", ["ResNet18_Weights", "EfficientNet_B0_Weights", "EfficientNet_B1_Weights"])
@pytest.mark.parametrize("size", [(451, 300), (300, 451), (257, 999), (640, 427), (224, 224)])
def test_tensors_match_torchvision_reference_transforms(make_image, weights, size):
    enum = getattr(torchvision.models, weights).DEFAULT
    reference = enum.transforms()
    preprocess = Preprocess(int(reference.resize_size[0]), int(reference.crop_size[0]), tuple(reference.mean),
                            tuple(reference.std), reference.interpolation.value)
    noise = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    images = load_images(make_image("noise.png", image=image), preprocess)
    expected = reference(image)
    assert images.tensors[0].shape == expected.shape
    assert torch.allclose(images.tensors[0], expected, atol=1e-5)


def test_image_smaller_than_the_crop_is_upscaled(make_image):
    images = load_images(make_image("small.png", size=(40, 20)), Preprocess(resize=64, crop=56))
    assert images.tensors.shape == (1, 3, 56, 56)
    assert images.photo(0).size == (56, 56)


def test_custom_preprocess_callable(make_image):
    path = make_image("x.png", size=(30, 20))
    images = load_images([path], preprocess=lambda image: torch.full((3, 8, 8), float(image.width)))
    assert images.tensors.shape == (1, 3, 8, 8)
    assert images.tensors[0, 0, 0, 0].item() == 30.0
    assert images.photo(0).size == (30, 20)  # the decoded image, uncropped


def test_sha256_is_of_the_file_bytes(make_image):
    paths = [make_image("b.png", color=(1, 2, 3)), make_image("a.jpg", color=(4, 5, 6))]
    images = load_images(paths)
    assert images.names == ["b.png", "a.jpg"]  # in the order given
    assert images.sha256 == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_bundled_photos_are_the_default(tmp_path):
    provenance = (BUNDLED_PHOTOS / "PROVENANCE.md").read_text()
    documented = dict(re.findall(r"^\| (\S+\.(?:png|jpg)) \|.*\| ([0-9a-f]{64}) \|$", provenance, re.MULTILINE))
    assert len(documented) == 5
    images = load_images()
    assert load_images([]).names == images.names
    assert images.names == sorted(documented)
    assert dict(zip(images.names, images.sha256)) == documented
    assert images.labels == [None] * 5 and images.skipped == []
    camera = np.asarray(images.photo(images.names.index("camera.png")))  # stored as grayscale
    assert (camera[..., 0] == camera[..., 1]).all() and (camera[..., 1] == camera[..., 2]).all()


# --- decoding on demand -------------------------------------------------------------------------------------


def test_inputs_and_photos_are_decoded_again_on_demand(make_image):
    paths = [make_image(f"{c}.png", size=(40, 30), color=(c, 0, 0)) for c in (10, 120, 250)]
    preprocess = Preprocess(resize=16, crop=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    images = load_images(paths, preprocess)
    assert images.sizes == [(40, 30)] * 3
    x = images.inputs([2, 0])
    assert x.shape == (2, 3, 16, 16)
    assert x[:, 0, 5, 5].tolist() == pytest.approx([250 / 255, 10 / 255], abs=1e-6)  # the red channel, exactly
    assert torch.equal(images.tensors, images.inputs([0, 1, 2]))
    assert images.photo(1).getpixel((0, 0)) == (120, 0, 0)


def test_a_file_changed_or_removed_after_loading_is_an_error(make_image):
    changed, removed = make_image("changed.png"), make_image("removed.png")
    images = load_images([changed, removed])
    make_image("changed.png", color=(1, 2, 3))
    removed.unlink()
    with pytest.raises(AuditorError, match=re.escape(f"--images: {changed} changed while the audit ran")):
        images.inputs([0])
    with pytest.raises(AuditorError, match=re.escape(f"--images: {removed} can no longer be read")):
        images.photo(1)


def test_photo_cache_keeps_only_the_most_recent_crops(make_image, monkeypatch):
    images = load_images([make_image(f"{i}.png") for i in range(4)], Preprocess(resize=8, crop=8))
    monkeypatch.setattr("auditor.inputs.images.CACHE_SIZE", 2)
    decoded_files = []
    real_decode = decode
    monkeypatch.setattr("auditor.inputs.images.decode", lambda data, **kw: decoded_files.append(data) or real_decode(data, **kw))
    for i in (0, 1, 0, 2, 3):  # 0 is cached when asked again; 2 and 3 push 0 and 1 out
        images.photo(i)
    assert len(decoded_files) == 4
    images.inputs([1, 2], keep=False)  # 1 is decoded again and not kept; 2 comes from the cache
    assert len(decoded_files) == 5
    images.inputs([3, 2])  # so 2 and 3 are still cached
    assert len(decoded_files) == 5


def test_labels_csv_gives_true_classes_over_subfolders(tmp_path: Path, make_image) -> None:
    make_image("cat/a.png")
    make_image("b.png")
    make_image("c.png")
    table = tmp_path / "labels.csv"
    table.write_text("image,class\ncat/a.png,dog\nb.png,1\nc.png,cat\nc.png,dog\nmissing.png,cat\n")
    images = load_images(tmp_path, class_names=["cat", "dog"], labels_csv=table)
    assert images.names == ["b.png", "c.png", "cat/a.png"]
    assert images.labels == [1, 0, 1]  # the CSV's class wins over the folder's
    assert images.label_sets == [(1,), (0, 1), (1,)]  # an image on two rows has two classes
    assert images.label_names == ["1", "cat", "dog"]


@pytest.mark.parametrize("text, message", [("a.png\n", "line 1"), ("", "has no image,class rows"),
                                           ("image,class\na.png,\n", "line 2")])
def test_a_bad_labels_csv_is_one_line_naming_the_row(tmp_path: Path, make_image, text: str, message: str) -> None:
    make_image("a.png")
    table = tmp_path / "labels.csv"
    table.write_text(text)
    with pytest.raises(AuditorError, match=message):
        load_images(tmp_path / "a.png", class_names=["cat"], labels_csv=table)
