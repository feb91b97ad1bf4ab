"""Find, decode and preprocess the images to audit; ImageFolder-style subfolders give labels."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from PIL import Image, ImageOps, UnidentifiedImageError

from auditor.errors import AuditorError
from auditor.inputs.preprocess import Preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
BUNDLED_PHOTOS = Path(__file__).resolve().parent.parent / "data" / "photos"


CACHE_SIZE = 32  # display crops kept decoded: the galleries' photos, which several sections draw again


@dataclass(frozen=True)
class Gallery:
    """The images that galleries show and why: a bounded sample of a large folder, by a stated rule."""

    indices: list[int]  # in the order shown
    reasons: list[str]  # why each is shown ("misclassified", "least confident", ...); "" when all images fit
    rule: str  # the rule in one sentence, for the report


def choose_gallery(confidence: Sequence[float], correct: Sequence[bool | None], count: int) -> Gallery:
    """At most `count` images to show, by a rule the report states; all of them, in file order, if they fit.

    Otherwise misclassified images come first (the most confident mistakes first), then the least and
    the most confident of the others alternately (top-1 probability), ties in file order: the cases a
    reviewer most needs to see, while every number still counts every image.
    """
    total = len(correct)
    if total <= count:
        return Gallery(list(range(total)), [""] * total, f"all {total} images, in file order")
    wrong = sorted((i for i in range(total) if correct[i] is False), key=lambda i: (-confidence[i], i))[:count]
    rest = [i for i in range(total) if correct[i] is not False]
    turns = [(iter(sorted(rest, key=lambda i: (confidence[i], i))), "least confident"),
             (iter(sorted(rest, key=lambda i: (-confidence[i], i))), "most confident")]
    picked = {i: "misclassified" for i in wrong}
    while len(picked) < count:  # count < total: an image not yet picked is left in both orders
        order, reason = turns[(len(picked) - len(wrong)) % 2]
        picked[next(i for i in order if i not in picked)] = reason
    labelled = any(c is not None for c in correct)
    first = (f"misclassified images first ({len(wrong)} shown of {sum(c is False for c in correct)}, the most "
             f"confident mistakes first), then " if labelled else "")
    rule = (f"{count} of {total} images: {first}the least and the most confident predictions alternately "
            f"(top-1 probability), ties in file order")
    return Gallery(list(picked), list(picked.values()), rule)


@dataclass
class ImageSet:
    """The images to audit as a list of files, decoded and preprocessed on demand: never all at once.

    Loading reads each file once to check that it decodes, hash it and measure it; `inputs` and `photo`
    read it again when asked (checking the hash), so memory holds one batch and a few cached crops,
    whatever the folder's size.
    """

    paths: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # display names (path relative to the folder given)
    sha256: list[str] = field(default_factory=list)  # of each file's bytes
    labels: list[int | None] = field(default_factory=list)  # class index when the folder name matches a class
    label_names: list[str | None] = field(default_factory=list)  # the folder name, even when it matches no class
    # every true class of each image: its label's alone, or several from --labels-csv rows (multi-label)
    label_sets: list[tuple[int, ...]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each file, upright
    preprocess: Preprocess | Callable[[Image.Image], torch.Tensor] = field(default_factory=Preprocess)
    gallery: Gallery | None = None  # chosen by the audit once the predictions are known (choose_gallery)
    _cache: OrderedDict[int, Image.Image] = field(default_factory=OrderedDict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_labels(self) -> bool:
        return any(label is not None for label in self.labels)

    def correct(self, index: int, predicted: Sequence[int]) -> bool | None:
        """Whether these predicted classes are image `index`'s true ones (None when it has none)."""
        return None if self.labels[index] is None else set(predicted) == set(self.label_sets[index])

    def choose_gallery(self, confidence: Sequence[float], predicted: Sequence[Sequence[int]], count: int) -> Gallery:
        """The gallery for these predictions (each image's predicted classes; see choose_gallery), kept here
        for the audit record."""
        correct = [self.correct(i, predicted[i]) for i in range(len(self))]
        self.gallery = choose_gallery(confidence, correct, count)
        return self.gallery

    def photo(self, index: int, keep: bool = True) -> Image.Image:
        """Image `index` as the model sees it (the crop, before normalisation); the most recent are cached.

        keep=False does not cache a new one: a pass over the whole folder would only evict the gallery's.
        """
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        known = isinstance(self.preprocess, Preprocess)
        image = decode(self._read(index), keep_alpha=known and self.preprocess.channels == 4)
        shown = self.preprocess.display(image) if known else image
        if keep:
            self._cache[index] = shown
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return shown

    def inputs(self, indices: Iterable[int], keep: bool = True) -> torch.Tensor:
        """The model inputs of these images as one batch (len(indices) x 3 x H x W), decoded now."""
        to_tensor = self.preprocess.to_tensor if isinstance(self.preprocess, Preprocess) else self.preprocess
        return torch.stack([to_tensor(self.photo(i, keep)) for i in indices])

    def input_batches(self, batches: Sequence[Sequence[int]], workers: int = 0,
                      pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """The model inputs of each batch of indices, in the order given, decoded in `workers` processes
        (torch DataLoader; 0: here, one batch at a time). Either way each batch is the same tensor, and
        nothing is cached; an unreadable or changed file stops the pass with its one-line error."""
        if workers < 1 or len(batches) < 2:
            for chosen in batches:
                yield self.inputs(chosen, keep=False)
            return
        loader = torch.utils.data.DataLoader(_Inputs(self), batch_sampler=[list(b) for b in batches],
                                             num_workers=min(workers, len(batches)), collate_fn=_stack,
                                             pin_memory=pin_memory, persistent_workers=False)
        for batch in loader:
            if isinstance(batch, _Failed):
                batch.throw()
            yield batch

    @property
    def tensors(self) -> torch.Tensor:
        """Every image's input as one tensor, built anew on each access: for a few images in a notebook.

        The audit itself never builds it; it streams through `inputs`, a batch at a time.
        """
        return self.inputs(range(len(self)), keep=False)

    def _read(self, index: int) -> bytes:
        """The file's bytes, as they were when loaded: a file changed or gone since is a user error."""
        try:
            data = self.paths[index].read_bytes()
        except OSError as error:
            raise AuditorError(f"--images: {self.paths[index]} can no longer be read ({_reason(error)}); "
                               f"keep the images in place while the audit runs") from None
        if hashlib.sha256(data).hexdigest() != self.sha256[index]:
            raise AuditorError(f"--images: {self.paths[index]} changed while the audit ran; run the audit again")
        return data


@dataclass(frozen=True)
class _Failed:
    """An exception raised in a DataLoader worker, brought back to be raised again here as it was (the
    DataLoader's own re-raise would add the worker's traceback to the message)."""

    error: BaseException

    @classmethod
    def of(cls, error: BaseException) -> _Failed:
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # noqa: BLE001 - an exception that does not pickle comes back as its line
            error = RuntimeError(f"{type(error).__name__}: {error}")
        return cls(error)

    def throw(self) -> None:
        raise self.error


class _Inputs(torch.utils.data.Dataset):
    """One image's model input by index, for the DataLoader workers of ImageSet.input_batches."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | _Failed:
        try:
            return self.images.inputs([index], keep=False)[0]
        except Exception as error:  # noqa: BLE001 - raised again in the main process (input_batches)
            return _Failed.of(error)


def _stack(items: list[torch.Tensor | _Failed]) -> torch.Tensor | _Failed:
    """A batch as ImageSet.inputs stacks it; the first failure instead, when an image failed."""
    failed = [item for item in items if isinstance(item, _Failed)]
    return failed[0] if failed else torch.stack(items)  # type: ignore[arg-type]


def check_file(path: Path) -> tuple[str, tuple[int, int]] | str:
    """(sha256, (width, height)) of a file that decodes as an image, else why it does not (the scan's check)."""
    try:
        data = path.read_bytes()
        size = decode(data).size
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return _reason(error)
    return hashlib.sha256(data).hexdigest(), size


Checker = Callable[[list[Path]], list["tuple[str, tuple[int, int]] | str"]]


def check_files(paths: list[Path], workers: int = 0) -> list[tuple[str, tuple[int, int]] | str]:
    """check_file of each path, in order: here, or in `workers` DataLoader processes."""
    if workers < 1 or len(paths) < 2:
        return [check_file(p) for p in paths]
    loader = torch.utils.data.DataLoader(_Checks(paths), batch_size=max(1, len(paths) // (4 * workers)),
                                         num_workers=min(workers, len(paths)), collate_fn=list,
                                         persistent_workers=False)
    return [result for part in loader for result in part]


class _Checks(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, tuple[int, int]] | str:
        return check_file(self.paths[index])


def find_image_files(paths: Sequence[str | Path]) -> list[tuple[Path, str, str | None]]:
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


def decode(data: bytes, keep_alpha: bool = False) -> Image.Image:
    """Bytes of any supported image as an upright 8-bit RGB image (RGBA with `keep_alpha`, for models that
    take an alpha channel).

    Handles EXIF rotation, the first frame of animations, 16-bit and float grayscale (rescaled to
    its own range, not clipped), palettes, and transparency (composited on white unless kept).
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
    if keep_alpha:
        return image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        return on_white(image)
    return image.convert("RGB")


def on_white(image: Image.Image) -> Image.Image:
    """An image with transparency as RGB, composited on white."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


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
    labels_csv: str | Path | None = None,
    check: Checker | None = None,
) -> ImageSet:
    """Find and check images (files or folders; default: the bundled photos) for the model.

    Each file is decoded once here to check it, then again batch by batch when the audit needs it.
    Unreadable files are skipped with a warning and listed in `ImageSet.skipped`; no image left is
    an AuditorError. `labels_csv` (image,class rows) gives true classes, over any subfolder's.
    `check` checks a list of files (default: check_files, here, in order): the audit passes one that
    uses --workers processes, or that splits the files over torchrun's ranks (auditor.distributed).
    """
    if paths is None or (not isinstance(paths, (str, Path)) and len(paths) == 0):
        paths = [BUNDLED_PHOTOS]
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    preprocess = preprocess or Preprocess()
    entries = find_image_files(paths)
    if not entries:
        raise AuditorError(
            f"--images: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, paths))}"
        )
    checked = (check or check_files)([path for path, _, _ in entries])
    return _scan(entries, preprocess, class_names, read_label_csv(labels_csv) if labels_csv else None, checked)


def _reason(error: Exception) -> str:
    """Why a file was skipped, in words (Pillow's own message names an in-memory buffer)."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image format, or a damaged file"
    text = str(error).splitlines()[0] if str(error) else ""
    return text or type(error).__name__


def _scan(
    entries: Iterable[tuple[Path, str, str | None]],
    preprocess: Preprocess | Callable[[Image.Image], torch.Tensor],
    class_names: Sequence[str],
    listed: dict[str, list[str]] | None = None,
    checked: Sequence[tuple[str, tuple[int, int]] | str] | None = None,
) -> ImageSet:
    """One pass over the files: decode each to check it, keep its hash and size, and drop the pixels.
    Labels come from `listed` (name -> classes, from --labels-csv) where it names the file, else the folder."""
    paths, names, hashes, label_names, sizes = [], [], [], [], []
    skipped: list[tuple[str, str]] = []
    entries = list(entries)
    if checked is None:
        checked = check_files([path for path, _, _ in entries])
    for (path, name, label_name), result in zip(entries, checked):
        if isinstance(result, str):
            log.warning("skipping %s: not a readable image (%s)", path, result)
            skipped.append((name, result))
            continue
        digest, size = result
        paths.append(path)
        names.append(name)
        hashes.append(digest)
        label_names.append(label_name)
        sizes.append(size)
    if not paths:
        listed = "; ".join(f"{name}: {reason}" for name, reason in skipped)
        raise AuditorError(f"--images: none of the files could be read as an image ({listed})")
    given = [[n] if n is not None else [] for n in label_names]
    if listed is not None:
        given = [listed.get(name, listed.get(Path(name).name, classes)) for name, classes in zip(names, given)]
        label_names = [classes[0] if classes else None for classes in given]
    matched = {n: match_label(n, class_names) for classes in given for n in classes}
    label_sets = [tuple(dict.fromkeys(matched[n] for n in classes if matched[n] is not None)) for classes in given]
    labels = [found[0] if found else None for found in label_sets]
    unknown = sorted(n for n, i in matched.items() if i is None)
    if unknown and class_names:
        log.warning("label folders or --labels-csv classes that match no class name, shown without a true class: "
                    "%s", ", ".join(unknown))
    return ImageSet(paths, names, hashes, labels, label_names, label_sets, skipped, sizes, preprocess)


def read_label_csv(path: str | Path) -> dict[str, list[str]]:
    """--labels-csv: image name -> its true classes, from `image,class` rows (a header row is optional; an
    image on several rows has several classes)."""
    file = Path(path)
    try:
        rows = list(csv.reader(file.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as error:
        raise AuditorError(f"--labels-csv: cannot read {file} ({_reason(error)})") from None
    header = bool(rows) and [cell.strip().lower() for cell in rows[0][:2]] == ["image", "class"]
    found: dict[str, list[str]] = {}
    for number, row in enumerate(rows[header:], start=1 + header):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise AuditorError(f"--labels-csv: line {number} of {file} is not image,class: {','.join(row)!r}")
        found.setdefault(row[0].strip(), []).append(row[1].strip())
    if not found:
        raise AuditorError(f"--labels-csv: {file} has no image,class rows")
    return found
