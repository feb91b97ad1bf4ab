"""Find, decode and preprocess the images to audit; ImageFolder-style subfolders give labels."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from auditor.errors import AuditorError
from auditor.preprocess import Preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
BUNDLED_PHOTOS = Path(__file__).parent / "data" / "photos"


@dataclass
class ImageSet:
    """The decoded images: model inputs, the crops the model saw, names, labels, and what was skipped."""

    tensors: torch.Tensor  # N x 3 x H x W, normalized model inputs
    originals: list[Image.Image]  # RGB crops exactly as the model saw them (before normalization)
    names: list[str]  # display names (path relative to the folder given)
    sha256: list[str]  # of each file's bytes
    labels: list[int | None]  # class index when the folder name matches a class
    label_names: list[str | None]  # the folder name, even when it matches no class
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each file, upright

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_labels(self) -> bool:
        return any(label is not None for label in self.labels)


def discover(paths: Sequence[str | Path]) -> list[tuple[Path, str, str | None]]:
    """Image files under `paths` as (path, display name, label folder name or None), sorted.

    A file directly inside a given folder has no label; a file in a subfolder is labelled with the
    name of its top-level subfolder (torchvision ImageFolder's convention).
    """
    found: list[tuple[Path, str, str | None]] = []
    for given in paths:
        root = Path(given)
        if root.is_file():
            found.append((root, root.name, None))
        elif root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            for path in files:
                relative = path.relative_to(root)
                label = relative.parts[0] if len(relative.parts) > 1 else None
                found.append((path, relative.as_posix(), label))
        else:
            raise AuditorError(f"--images: {given} does not exist; give an image file or a folder of images")
    return found


def decode(data: bytes) -> Image.Image:
    """Bytes of any supported image as an upright 8-bit RGB image.

    Handles EXIF rotation, the first frame of animations, 16-bit and float grayscale (rescaled to
    its own range, not clipped), palettes, and transparency (composited on white).
    """
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            array = array / 65535.0
        else:
            low, high = float(array.min()), float(array.max())
            array = (array - low) / (high - low) if high > low else np.zeros_like(array)
        image = Image.fromarray(np.round(array * 255).astype(np.uint8), mode="L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        # palette and tRNS colour-key transparency become an alpha channel, composited below
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def match_label(folder: str, class_names: Sequence[str]) -> int | None:
    """The class index a folder name stands for: its exact name, its name with _ for spaces, or its index."""
    wanted = folder.strip().lower().replace("_", " ")
    for index, name in enumerate(class_names):
        if name.lower().replace("_", " ") == wanted:
            return index
    if folder.isdigit() and int(folder) < len(class_names):
        return int(folder)
    return None


def load_images(
    paths: Sequence[str | Path] | str | Path | None = None,
    preprocess: Preprocess | Callable[[Image.Image], torch.Tensor] | None = None,
    class_names: Sequence[str] = (),
) -> ImageSet:
    """Load images (files or folders; default: the bundled photos) ready for the model.

    Unreadable files are skipped with a warning and listed in `ImageSet.skipped`; no image left is
    an AuditorError.
    """
    if paths is None or (not isinstance(paths, (str, Path)) and len(paths) == 0):
        paths = [BUNDLED_PHOTOS]
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    preprocess = preprocess or Preprocess()
    entries = discover(paths)
    if not entries:
        raise AuditorError(
            f"--images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, paths))}"
        )
    return _decode_all(entries, preprocess, class_names)


def _reason(error: Exception) -> str:
    """Why a file was skipped, in words (Pillow's own message names an in-memory buffer)."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format, or a damaged file"
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__


def _decode_all(
    entries: Iterable[tuple[Path, str, str | None]],
    preprocess: Preprocess | Callable[[Image.Image], torch.Tensor],
    class_names: Sequence[str],
) -> ImageSet:
    tensors, originals, names, hashes, label_names, sizes = [], [], [], [], [], []
    skipped: list[tuple[str, str]] = []
    for path, name, label_name in entries:
        try:
            data = path.read_bytes()
            image = decode(data)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            reason = _reason(error)
            log.warning("skipping %s: not a readable image (%s)", path, reason)
            skipped.append((name, reason))
            continue
        if isinstance(preprocess, Preprocess):
            shown = preprocess.display(image)
            tensor = preprocess.to_tensor(shown)
        else:
            shown, tensor = image, preprocess(image)
        tensors.append(tensor)
        originals.append(shown)
        names.append(name)
        hashes.append(hashlib.sha256(data).hexdigest())
        label_names.append(label_name)
        sizes.append(image.size)
    if not tensors:
        listed = "; ".join(f"{name}: {reason}" for name, reason in skipped)
        raise AuditorError(f"--images: none of the files could be read as an image ({listed})")
    folders = {n: match_label(n, class_names) for n in set(label_names) if n is not None}
    labels = [folders[n] if n is not None else None for n in label_names]
    unknown = sorted(n for n, i in folders.items() if i is None)
    if unknown and class_names:
        log.warning("label folders that match no class name, shown without a true class: %s", ", ".join(unknown))
    return ImageSet(torch.stack(tensors), originals, names, hashes, labels, label_names, skipped, sizes)
