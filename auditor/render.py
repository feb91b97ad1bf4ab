"""Arrays and images to encoded bytes, with no pyplot state. Photos as JPEG keep WeasyPrint fast."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from auditor.section import Card


def to_jpeg(image: Image.Image | np.ndarray, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    _as_image(image).convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def to_png(image: Image.Image | np.ndarray) -> bytes:
    buffer = io.BytesIO()
    _as_image(image).save(buffer, format="PNG", optimize=True)
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


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's data (the report's own font), so sheets look the same everywhere."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


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
