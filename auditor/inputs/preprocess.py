"""Model input preprocessing: resize, center crop, normalize — kept as data so the report can show it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to `resize`, center-crop `crop` x `crop`, scale to [0, 1], normalize."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, not {self.interpolation!r}")

    def geometry(self, original_size: tuple[int, int]) -> tuple[tuple[int, int], int, int]:
        """For an image of (width, height): the resized (width, height) and the crop's left and top offsets.

        Same geometry as torchvision's Resize(int) + CenterCrop, so the tensors match the reference
        transforms of torchvision weights: the long side is truncated, the crop offset rounded.
        """
        width, height = original_size
        short, long = min(width, height), max(width, height)
        new_short = max(self.resize, self.crop)  # never upscale past the crop by distorting the aspect
        new_long = max(new_short, int(new_short * long / short))
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        return size, int(round((size[0] - self.crop) / 2.0)), int(round((size[1] - self.crop) / 2.0))

    def display(self, image: Image.Image) -> Image.Image:
        """The RGB image exactly as the model sees it, before normalization (for overlays)."""
        size, left, top = self.geometry(image.size)
        image = image.convert("RGB")
        resized = image if size == image.size else image.resize(size, _RESAMPLE[self.interpolation])
        return resized.crop((left, top, left + self.crop, top + self.crop))

    def to_tensor(self, display_image: Image.Image) -> torch.Tensor:
        """A display image (from `display`) as a normalized 3 x crop x crop float tensor."""
        array = np.asarray(display_image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.display(image))

    def denormalize(self, tensor: torch.Tensor) -> torch.Tensor:
        """Undo the normalization of a [..., 3, H, W] tensor, back to [0, 1] pixel values."""
        mean = torch.tensor(self.mean, device=tensor.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=tensor.device).view(3, 1, 1)
        return (tensor * std + mean).clamp(0, 1)

    def describe(self) -> str:
        mean = ", ".join(f"{v:g}" for v in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return (
            f"resize {self.resize} ({self.interpolation}), center crop {self.crop}, "
            f"mean ({mean}), std ({std})"
        )

    def with_input_size(self, size: int) -> Preprocess:
        """Same preprocessing at another crop size, keeping the model's resize-to-crop ratio."""
        return Preprocess(
            resize=round(size * self.resize / self.crop),
            crop=size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )
