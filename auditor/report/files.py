"""Atomic file writes and figure files with stable, descriptive names."""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from auditor.config import RunOptions
from auditor.document import Cards, Figure, Report, Table
from auditor.drawing import card_sheet
from auditor.report.latex import render_latex
from auditor.report.numbering import numbered_blocks
from auditor.report.pdf import svg_size, svg_to_pdf


def write_atomic(path: Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process umask (read by setting it and putting it back): mkstemp's 0600 is too strict."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def slug(text: str) -> str:
    """A file-name-safe version of a key: lower case, letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def figure_file_name(number: int, key: str, extension: str) -> str:
    return f"fig{number:02d}-{slug(key)}.{extension}"


def table_csv(table: Table) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(table.columns)
    writer.writerows(table.rows)
    if table.footer:
        writer.writerow(table.footer)
    return buffer.getvalue().encode("utf-8")


CSS_PX_PER_INCH = 96  # the size a figure has in report.html and report.pdf
TEXT_WIDTH_IN = 182 / 25.4  # report.pdf's text width: A4 less 14 mm margins
DEFAULT_DPI = RunOptions.figure_dpi


def print_width(pixels: float, hint: str = "") -> float:
    """Inches a figure `pixels` wide prints at in report.pdf: 96 pixels per inch, at most the text width
    (or its share of it, for a figure with a width hint such as "60%")."""
    share = float(hint[:-1]) / 100 if hint.endswith("%") and hint[:-1].replace(".", "", 1).isdigit() else 1.0
    return min(pixels / CSS_PX_PER_INCH, TEXT_WIDTH_IN * share)


def at_dpi(data: bytes, mime: str, dpi: int, hint: str = "") -> tuple[bytes, float | None]:
    """A raster figure resampled to `dpi` pixels per inch at its print size, with the dpi in its metadata,
    and that print width in inches. Resampling adds no detail the figure did not have: it makes the file
    print sharp at that size (and tells LaTeX and word processors the size)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError):  # a plugin's figure Pillow cannot read: the file as given, at the line width
        return data, None
    inches = print_width(image.width, hint)
    width = max(1, round(inches * dpi))
    if abs(width - image.width) > 1:
        height = max(1, round(image.height * width / image.width))
        image = image.convert("RGBA" if "A" in image.mode else "RGB").resize((width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if mime == "image/jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=92, dpi=(dpi, dpi))
    else:
        image.save(buffer, format="PNG", compress_level=3, dpi=(dpi, dpi))
    return buffer.getvalue(), inches


def write_figures(report: Report, folder: Path, dpi: int = DEFAULT_DPI) -> Path:
    """Every figure as its own file (`fig03-grad-cam-coffee.png`; an SVG also as PDF), every table as CSV,
    and figures.tex with all of them for a thesis (auditor.report.latex)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[int, tuple[str, float | None]] = {}
    for numbered in numbered_blocks(report):
        block = numbered.block
        if isinstance(block, Figure) and block.mime == "image/svg+xml":
            name = figure_file_name(numbered.number, block.key, "svg")
            write_atomic(folder / name, block.data)
            write_atomic(folder / f"{name[:-4]}.pdf", svg_to_pdf(block.data))
            files[numbered.number] = (f"{name[:-4]}.pdf",
                                      print_width(svg_size(block.data.decode("utf-8"))[0], block.width))
        elif isinstance(block, (Figure, Cards)):
            data, mime, hint = ((block.data, block.mime, block.width) if isinstance(block, Figure)
                                else (card_sheet(block.cards), "image/png", ""))
            name = figure_file_name(numbered.number, block.key, {"image/jpeg": "jpg"}.get(mime, "png"))
            data, inches = at_dpi(data, mime, dpi, hint)
            write_atomic(folder / name, data)
            files[numbered.number] = (name, inches)
        elif isinstance(block, Table):
            write_atomic(folder / f"table{numbered.number:02d}-{slug(block.key)}.csv", table_csv(block))
    write_atomic(folder / "figures.tex", render_latex(report, files).encode("utf-8"))
    return folder
