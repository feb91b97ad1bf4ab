"""Model input preprocessing: resize, center crop, normalize — kept as data so the report can show it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
INTERPOLATIONS = tuple(_RESAMPLE)
RESIZE_MODES = ("shortest-edge", "exact")

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # Pillow's mode for each number of input channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = int | tuple[int, int]  # one side for a square, or (height, width)


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _compact(size: Size | list[int]) -> Size:
    """A square (h, h) as h, so that Preprocess(crop=(224, 224)) == Preprocess(crop=224)."""
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"a size is one int or (height, width), not {size!r}")
        height, width = int(size[0]), int(size[1])
        return height if height == width else (height, width)
    return int(size)


def _text(size: Size) -> str:
    height, width = _pair(size)
    return f"{height}" if height == width else f"{height} x {width}"


@dataclass(frozen=True)
class Preprocess:
    """Resize, center-crop `crop`, scale to [0, 1], normalize.

    `resize_mode` "shortest-edge" (the default): an int `resize` is the short side after resizing (aspect
    kept), as torchvision's Resize(int); a (height, width) `resize` is the smallest aspect-keeping size
    that covers it (timm's ResizeKeepRatio). "exact": the image is resized to `resize` (one int for a
    square, or (height, width)) whatever its aspect, as Hugging Face's size={"height", "width"} and timm's
    "squash". `crop` is one int for a square or (height, width); a square given as a pair is stored as an int.
    """

    resize: Size = 256
    crop: Size = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_mode: str = "shortest-edge"
    # the input channels the model takes: 3 (RGB), 1 (grayscale: ITU-R 601 luma, normalised by the first
    # mean and std) or 4 (RGBA: the alpha channel kept, in [0, 1], not normalised)
    channels: int = 3

    def __post_init__(self) -> None:
        if self.channels not in _MODES:
            raise ValueError(f"channels must be 1, 3 or 4, not {self.channels!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, not {self.interpolation!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        object.__setattr__(self, "resize", _compact(self.resize))
        object.__setattr__(self, "crop", _compact(self.crop))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.resize_mode == "exact":
            (rh, rw), (ch, cw) = _pair(self.resize), _pair(self.crop)
            if ch > rh or cw > rw:
                raise ValueError(f"crop {_text(self.crop)} is larger than the exact resize {_text(self.resize)}")

    @property
    def crop_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return _pair(self.crop)

    def geometry(self, original_size: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
        """For an image of (width, height): the resized (width, height) and the crop's left and top offsets.

        Same geometry as torchvision's Resize(int) + CenterCrop, so the tensors match the reference
        transforms of torchvision weights: the long side is truncated, the crop offset rounded.
        """
        width, height = original_size
        crop_height, crop_width = self.crop_size
        if self.resize_mode == "exact":
            new_height, new_width = _pair(self.resize)
        else:
            resize_height, resize_width = _pair(self.resize)
            # never upscale past the crop by distorting the aspect
            target_height, target_width = max(resize_height, crop_height), max(resize_width, crop_width)
            if target_height / height >= target_width / width:  # the height binds
                new_height = target_height
                new_width = max(target_width, int(target_height * width / height))
            else:
                new_width = target_width
                new_height = max(target_height, int(target_width * height / width))
        size = (new_width, new_height)
        return size, round((new_width - crop_width) / 2.0), round((new_height - crop_height) / 2.0)

    def display(self, image: Image.Image) -> Image.Image:
        """The image exactly as the model sees it, before normalization (for overlays): RGB (grey for a
        one-channel model), or RGBA for a four-channel one."""
        size, left, top = self.geometry(image.size)
        image = image.convert(_MODES[self.channels])
        resized = image if size == image.size else image.resize(size, _RESAMPLE[self.interpolation])
        crop_height, crop_width = self.crop_size
        shown = resized.crop((left, top, left + crop_width, top + crop_height))
        return shown.convert("RGB") if self.channels == 1 else shown

    def to_tensor(self, display_image: Image.Image) -> torch.Tensor:
        """A display image (from `display`) as a normalized `channels` x H x W float tensor."""
        array = np.asarray(display_image.convert(_MODES[self.channels]), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)
        count = min(self.channels, 3)  # an alpha channel is not normalised
        mean = torch.tensor(self.mean[:count] + (0.0,) * (self.channels - count)).view(-1, 1, 1)
        std = torch.tensor(self.std[:count] + (1.0,) * (self.channels - count)).view(-1, 1, 1)
        return (tensor - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.display(image))

    def denormalize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Undo the normalization of a [..., 3, H, W] tensor, back to [0, 1] pixel values."""
        mean = torch.tensor(self.mean, device=tensor.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=tensor.device).view(3, 1, 1)
        return (tensor * std + mean).clamp(0, 1)

    def describe(self) -> str:
        shown = 1 if self.channels == 1 else 3  # a grayscale input is normalised by the first mean and std
        mean = ", ".join(f"{v:g}" for v in self.mean[:shown])
        std = ", ".join(f"{v:g}" for v in self.std[:shown])
        if self.resize_mode == "exact":
            resize = f"resize to {' x '.join(map(str, _pair(self.resize)))} ({self.interpolation}, aspect not kept)"
            crop = "no crop" if self.crop_size == _pair(self.resize) else f"center crop {_text(self.crop)}"
        else:
            shortest = isinstance(self.resize, int)
            resize = (f"resize {self.resize} ({self.interpolation})" if shortest else
                      f"resize to cover {_text(self.resize)} ({self.interpolation}, aspect kept)")
            crop = f"center crop {_text(self.crop)}"
        channels = {1: ", as grayscale (1 channel)", 3: "", 4: ", RGBA (4 channels, alpha in [0, 1])"}[self.channels]
        return f"{resize}, {crop}{channels}, mean ({mean}), std ({std})"

    def with_input_size(self, size: Size) -> Preprocess:
        """Same preprocessing at another crop size (an int or (height, width)), keeping the resize-to-crop ratio."""
        new_height, new_width = _pair(size)
        (resize_height, resize_width), (crop_height, crop_width) = _pair(self.resize), self.crop_size
        if self.resize_mode == "shortest-edge" and isinstance(self.resize, int) and new_height == new_width:
            resize: Size = round(new_height * self.resize / min(crop_height, crop_width))
        else:
            resize = (round(new_height * resize_height / crop_height), round(new_width * resize_width / crop_width))
        return Preprocess(
            resize=resize,
            crop=_compact((new_height, new_width)),
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
            resize_mode=self.resize_mode,
            channels=self.channels,
        )


def pattern_image(size: tuple[int, int] = (131, 97)) -> Image.Image:
    """A smooth, asymmetric RGB image of (width, height): gradients and a soft disc, so that two correct
    implementations of one preprocessing agree closely and a wrong crop, size, mean or std shows."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = np.exp(-(((x - 0.3 * width) / (0.25 * width)) ** 2 + ((y - 0.6 * height) / (0.3 * height)) ** 2))
    channels = [x / width, y / height, 0.2 + 0.6 * disc]
    return Image.fromarray((np.stack(channels, -1) * 255).round().astype(np.uint8))


def compare_preprocessing(preprocess: Preprocess, library: Callable[[Image.Image], torch.Tensor],
                          what: str) -> str | None:
    """How `preprocess` differs from a library's own (`library`: a test pattern -> its input tensor), in words;
    None when they agree. A library call that fails (other arguments, another version) is said so too."""
    image = pattern_image()
    try:
        return disagreement(preprocess, library(image), image)
    except Exception as error:  # a library that wants other arguments: nothing to compare
        reason = next(iter(str(error).splitlines()), "") or type(error).__name__
        return f"could not be compared with {what} ({reason})"


def disagreement(preprocess: Preprocess, reference: torch.Tensor, image: Image.Image) -> str | None:
    """How `preprocess` of `image` differs from a library's own preprocessing of it (`reference`, 3 x H x W),
    in words; None when they agree (mean absolute difference under 2% of the pixel range)."""
    ours = preprocess(image)
    reference = reference.detach().float().cpu().reshape(-1, *reference.shape[-2:])
    if tuple(reference.shape) != tuple(ours.shape):
        return f"the model's own preprocessing gives a {' x '.join(map(str, reference.shape))} input, auditor's " \
               f"a {' x '.join(map(str, ours.shape))} one"
    std = torch.tensor(preprocess.std).view(3, 1, 1)
    difference = float(((ours - reference).abs() * std).mean())
    if difference > 0.02:
        return f"auditor's input differs from the model's own preprocessing by {difference:.3f} on average " \
               f"(pixel values in [0, 1])"
    return None
