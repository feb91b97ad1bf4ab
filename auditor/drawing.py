"""Arrays and images to encoded bytes, with no pyplot state. Photos as JPEG keep WeasyPrint fast."""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from auditor.document import Card


def to_jpeg(image: Image.Image | np.ndarray, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    _as_image(image).convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def to_png(image: Image.Image | np.ndarray) -> bytes:
    """PNG at zlib level 3: as small as `optimize` on our figures (filters matter more) and ten times faster."""
    buffer = io.BytesIO()
    _as_image(image).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _as_image(image: Image.Image | np.ndarray) -> Image.Image:
    """An 8-bit image from a PIL image, a uint8 array, or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(array)


@functools.lru_cache(maxsize=32)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's data (the report's own font), so sheets look the same everywhere."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def colorize(values: np.ndarray, cmap: str, low: float, high: float) -> np.ndarray:
    """Values mapped through a matplotlib colour map on [low, high]: uint8 RGB, same height and width."""
    span = high - low if high > low else 1.0
    lookup = _lookup_table(cmap)
    index = np.clip((np.asarray(values, dtype=np.float64) - low) / span * 255, 0, 255).round().astype(np.intp)
    return lookup[index]


@functools.lru_cache(maxsize=16)
def _lookup_table(cmap: str) -> np.ndarray:
    """256 RGB colours of a matplotlib colour map, computed once per map."""
    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def upscale(image: np.ndarray, size: int, smooth: bool = False) -> np.ndarray:
    """Resize so the longer side is `size`: nearest neighbour keeps small maps' pixels visible."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, target, interpolation=cv2.INTER_LINEAR if smooth else cv2.INTER_NEAREST)


def overlay(photo: Image.Image | np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """A [0, 1] heat map over a photo (uint8 RGB): jet by default, blue low and red high."""
    base = np.asarray(_as_image(photo).convert("RGB"), dtype=np.float32)
    if heat.shape != base.shape[:2]:
        heat = cv2.resize(heat.astype(np.float32), (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = colorize(heat, cmap, 0.0, 1.0).astype(np.float32)
    return (base * (1 - alpha) + colored * alpha).round().astype(np.uint8)


def tile_grid(tiles: Sequence[np.ndarray], columns: int, labels: Sequence[str] = (), pad: int = 2,
              background: int = 255) -> Image.Image:
    """Equal-sized uint8 tiles (H×W×3) in a grid, each with its label in a corner box: one image, no subplots."""
    height, width = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), background, np.uint8)
    for index, tile in enumerate(tiles):
        y, x = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        sheet[y:y + height, x:x + width] = tile
    image = Image.fromarray(sheet)
    if labels:
        draw = ImageDraw.Draw(image)
        font = _font(max(9, min(14, width // 6)))
        for index, label in enumerate(labels):
            y, x = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
            box = draw.textbbox((x + 2, y + 1), label, font=font)
            draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(255, 255, 255))
            draw.text((x + 2, y + 1), label, font=font, fill=(29, 35, 39))
    return image


def colorbar(cmap: str, low: float, high: float, width: int, label: str = "", height: int = 12) -> Image.Image:
    """A horizontal colour bar with its two ends and zero (when inside) marked, and a label below."""
    font = _font(12)
    ramp = colorize(np.tile(np.linspace(low, high, width), (height, 1)), cmap, low, high)
    label_width = round(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)) if label else 0
    left = max(20, (label_width - width) // 2 + 4)
    bar = Image.new("RGB", (width + 2 * left, height + 36), "white")
    bar.paste(Image.fromarray(ramp), (left, 0))
    draw = ImageDraw.Draw(bar)
    draw.rectangle((left - 1, 0, left + width, height), outline=(95, 107, 115))
    ticks = [(low, 0.0), (high, 1.0)] + ([(0.0, -low / (high - low))] if low < 0 < high else [])
    for value, where in ticks:
        x = left + round(where * (width - 1))
        draw.line((x, height, x, height + 4), fill=(95, 107, 115))
        draw.text((x, height + 5), f"{value:.3g}", font=font, fill=(29, 35, 39), anchor="ma")
    if label:
        draw.text((left + width // 2, height + 20), label, font=font, fill=(95, 107, 115), anchor="ma")
    return bar


def stack(images: Sequence[Image.Image], vertical: bool = True, gap: int = 6) -> Image.Image:
    """Images one under (or beside) the other, centred, on white: a panel with its colour bar, say."""
    if vertical:
        size = (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1))
    else:
        size = (sum(i.width for i in images) + gap * (len(images) - 1), max(i.height for i in images))
    sheet = Image.new("RGB", size, "white")
    offset = 0
    for image in images:
        if vertical:
            sheet.paste(image.convert("RGB"), ((size[0] - image.width) // 2, offset))
            offset += image.height + gap
        else:
            sheet.paste(image.convert("RGB"), (offset, (size[1] - image.height) // 2))
            offset += image.width + gap
    return sheet


def titled(image: Image.Image | np.ndarray, title: str, size: int = 13) -> Image.Image:
    """An image with a one-line title above it (kept short: long titles are cut with an ellipsis)."""
    image = _as_image(image).convert("RGB")
    font = _font(size)
    while title and ImageDraw.Draw(image).textlength(title, font=font) > image.width and len(title) > 4:
        title = title[:-2].rstrip() + "…" if not title.endswith("…") else title[:-2] + "…"
    sheet = Image.new("RGB", (image.width, image.height + size + 8), "white")
    sheet.paste(image, (0, size + 8))
    ImageDraw.Draw(sheet).text((image.width // 2, 2), title, font=font, fill=(29, 35, 39), anchor="ma")
    return sheet


def card_sheet(cards: Sequence[Card], columns: int = 4, thumb: int = 160) -> bytes:
    """Cards (image, title, bars) drawn onto one PNG, for --figures: the HTML draws them with CSS."""
    regular, bold = _font(13), _font(14, bold=True)
    pad, line = 10, 19
    rows_needed = max(len(c.bars) + len(c.lines) for c in cards) if cards else 0
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + line * (rows_needed + 1) + 4
    columns = max(1, min(columns, len(cards)))
    rows = -(-len(cards) // columns)
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for index, card in enumerate(cards):
        x, y = (index % columns) * cell_w + pad, (index // columns) * cell_h + pad
        image = Image.open(io.BytesIO(card.image)).convert("RGB").resize((thumb, thumb))
        sheet.paste(image, (x, y))
        y += thumb + 4
        title = card.title if len(card.title) <= 24 else card.title[:23] + "…"
        draw.text((x, y), title + (f"  [{card.badge}]" if card.badge else ""), font=bold, fill="#1d2327")
        for bar in card.bars:
            y += line
            draw.rectangle((x, y + 1, x + round(thumb * bar.value), y + line - 3), fill="#c9d9f1")
            if bar.highlight:
                draw.rectangle((x, y, x + thumb, y + line - 2), outline="#f2c14e", width=2)
            label = bar.label if len(bar.label) <= 20 else bar.label[:19] + "…"
            draw.text((x + 3, y + 1), label, font=regular, fill="#1d2327")
            draw.text((x + thumb - 3, y + 1), f"{bar.value:.3f}", font=regular, fill="#1d2327", anchor="ra")
        for text in card.lines:
            y += line
            draw.text((x, y + 1), text[:34], font=_font(11), fill="#5f6b73")
    return to_png(sheet)
