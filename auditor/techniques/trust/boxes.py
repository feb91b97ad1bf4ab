"""How far to trust a saliency map, part 3: localisation against boxes the user drew (`--boxes FILE`).

Boxes are in original image pixels, which is what a user can measure; maps are in the model's
input pixels (after resize and centre crop). The pointing game and the mass inside the box both map
the map's pixel centres back to original pixels, so the 15 px tolerance means 15 pixels of the
user's image whatever the resize.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from auditor.errors import AuditorError
from auditor.inputs.preprocess import Preprocess

__all__ = ["BOX_COLUMNS", "Box", "box_to_input", "mass_inside", "pointing_game", "read_boxes"]

BOX_COLUMNS = ("image", "class", "x0", "y0", "x1", "y1")
Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Box:
    """One row of a boxes file: an object of class `label` in `image`, in original image pixels."""

    image: str  # the image's file name or path, as written in the file
    label: str  # class name or index, as written
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def rect(self) -> Rect:
        return (self.x0, self.y0, self.x1, self.y1)


def read_boxes(path: str | Path) -> list[Box]:
    """Boxes from a CSV (header image,class,x0,y0,x1,y1) or JSON file (a list of objects with those keys).

    Every problem is an AuditorError naming the file and the line (CSV) or entry (JSON).
    """
    file = Path(path)
    if not file.is_file():
        raise AuditorError(f"--boxes: {path} does not exist")
    suffix = file.suffix.lower()
    if suffix == ".csv":
        boxes = _read_csv(file, str(path))
    elif suffix == ".json":
        boxes = _read_json(file, str(path))
    else:
        raise AuditorError(f"--boxes: {path} must be a .csv or .json file")
    if not boxes:
        raise AuditorError(f"--boxes: {path} holds no boxes")
    return boxes


def _read_csv(file: Path, name: str) -> list[Box]:
    with file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in BOX_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise AuditorError(f"--boxes: {name} line 1: the header must be {','.join(BOX_COLUMNS)} "
                               f"(missing {', '.join(missing)})")
        return [_box(row, f"{name} line {reader.line_num}") for row in reader]


def _read_json(file: Path, name: str) -> list[Box]:
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AuditorError(f"--boxes: {name} is not valid JSON ({error})") from None
    if not isinstance(entries, list):
        raise AuditorError(f"--boxes: {name} must hold a list of objects with keys {', '.join(BOX_COLUMNS)}")
    boxes = []
    for number, entry in enumerate(entries, start=1):
        where = f"{name} entry {number}"
        if not isinstance(entry, dict):
            raise AuditorError(f"--boxes: {where}: must be an object with keys {', '.join(BOX_COLUMNS)}")
        boxes.append(_box(entry, where))
    return boxes


def _box(row: dict[str, Any], where: str) -> Box:
    """One checked box; `where` names the file and line or entry for the error message."""
    text = {}
    for key in ("image", "class"):
        value = row.get(key)
        if value is None or str(value).strip() == "":
            raise AuditorError(f"--boxes: {where}: {key} is missing")
        text[key] = str(value).strip()
    x0, y0, x1, y1 = (_coordinate(row.get(key), key, where) for key in ("x0", "y0", "x1", "y1"))
    if x1 <= x0:
        raise AuditorError(f"--boxes: {where}: x1 must be greater than x0")
    if y1 <= y0:
        raise AuditorError(f"--boxes: {where}: y1 must be greater than y0")
    return Box(text["image"], text["class"], x0, y0, x1, y1)


def _coordinate(value: Any, key: str, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise AuditorError(f"--boxes: {where}: {key} must be a number of pixels, not {value!r}")
    return number


def _geometry(original_size: tuple[int, int], preprocess: Preprocess) -> tuple[float, float, int, int]:
    """Scale (x, y) and crop offset (left, top) of Preprocess.display for an image of `original_size` (w, h)."""
    (new_width, new_height), left, top = preprocess.geometry(original_size)
    return new_width / original_size[0], new_height / original_size[1], left, top


def box_to_input(box: Rect, original_size: tuple[int, int], preprocess: Preprocess) -> Rect:
    """A box (x0, y0, x1, y1) in original pixels -> the same box in the model's input crop, in input pixels.

    Not clipped: a box that reaches outside the centre crop keeps coordinates below 0 or above the
    crop size (clip it to draw it).
    """
    sx, sy, left, top = _geometry(original_size, preprocess)
    x0, y0, x1, y1 = box
    return (x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top)


def _near_boxes(boxes: Sequence[Rect], original_size: tuple[int, int], preprocess: Preprocess,
                size: tuple[int, int], tolerance: float, device: torch.device) -> torch.Tensor:
    """[H, W] bool: input pixels whose centre, in original pixels, lies within `tolerance` of any box."""
    if not boxes:
        raise ValueError("every map needs at least one box")
    sx, sy, left, top = _geometry(original_size, preprocess)
    height, width = size
    xs = (torch.arange(width, device=device, dtype=torch.float64) + 0.5 + left) / sx
    ys = (torch.arange(height, device=device, dtype=torch.float64) + 0.5 + top) / sy
    rects = torch.tensor(boxes, dtype=torch.float64, device=device)  # [K, 4]
    dx = (torch.maximum(rects[:, 0:1] - xs, xs - rects[:, 2:3])).clamp_min(0)  # [K, W]
    dy = (torch.maximum(rects[:, 1:2] - ys, ys - rects[:, 3:4])).clamp_min(0)  # [K, H]
    distance = torch.hypot(dy.unsqueeze(2), dx.unsqueeze(1))  # [K, H, W]
    return (distance <= tolerance).any(dim=0)


def _masks(maps: torch.Tensor, boxes: Sequence[Sequence[Rect]], original_sizes: Sequence[tuple[int, int]],
           preprocess: Preprocess, tolerance: float) -> torch.Tensor:
    if maps.ndim != 3 or len(boxes) != len(maps) or len(original_sizes) != len(maps):
        raise ValueError(f"need maps [N, H, W] with N box lists and N image sizes, not {tuple(maps.shape)}, "
                         f"{len(boxes)} and {len(original_sizes)}")
    if tuple(maps.shape[-2:]) != preprocess.crop_size:
        raise ValueError(f"maps must be at the input size {preprocess.crop_size}, not {tuple(maps.shape[-2:])}")
    return torch.stack([_near_boxes(rects, size, preprocess, tuple(maps.shape[-2:]), tolerance, maps.device)
                        for rects, size in zip(boxes, original_sizes)])


def pointing_game(maps: torch.Tensor, boxes: Sequence[Sequence[Rect]], original_sizes: Sequence[tuple[int, int]],
                  preprocess: Preprocess, tolerance_px: float = 15.0) -> torch.Tensor:
    """[N] bool: a hit when the map's maximum lies within `tolerance_px` original pixels of one of its boxes.

    maps: [N, crop, crop] in input pixels; boxes: per map, its boxes (x0, y0, x1, y1) in original
    pixels (several boxes: the nearest counts); original_sizes: (width, height) per map. Distance is
    from the centre of the maximum's pixel to the box (0 inside). When several pixels share the
    maximum (an upsampled plateau), any of them near the box is a hit, as in quantus' PointingGame.
    """
    near = _masks(maps, boxes, original_sizes, preprocess, tolerance_px)
    flat = maps.flatten(1)
    is_max = (flat == flat.amax(dim=1, keepdim=True)).view_as(maps)
    return (is_max & near).flatten(1).any(dim=1)


def mass_inside(maps: torch.Tensor, boxes: Sequence[Sequence[Rect]], original_sizes: Sequence[tuple[int, int]],
                preprocess: Preprocess) -> torch.Tensor:
    """[N]: share of each (non-negative) map's total inside its boxes, input pixels counted by their centre.

    Says whether the model looks at the object or at its surroundings, which the pointing game's
    single pixel cannot. NaN for a map that is zero everywhere (no mass to share).
    """
    inside = _masks(maps, boxes, original_sizes, preprocess, 0.0)
    total = maps.flatten(1).sum(dim=1)
    within = (maps * inside).flatten(1).sum(dim=1)
    return (within / total).where(total > 0, torch.full_like(total, math.nan))
