"""Atomic file writes and figure files with stable, descriptive names."""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from pathlib import Path

from auditor.document import Cards, Figure, Report, Table
from auditor.drawing import card_sheet
from auditor.report.numbering import numbered_blocks


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


def write_figures(report: Report, folder: Path) -> Path:
    """Every figure as its own file (`fig03-grad-cam-coffee.png`) and every table as CSV, for a thesis."""
    folder.mkdir(parents=True, exist_ok=True)
    for numbered in numbered_blocks(report):
        block = numbered.block
        if isinstance(block, Figure):
            write_atomic(folder / figure_file_name(numbered.number, block.key, block.extension), block.data)
        elif isinstance(block, Cards):
            write_atomic(folder / figure_file_name(numbered.number, block.key, "png"), card_sheet(block.cards))
        elif isinstance(block, Table):
            write_atomic(folder / f"table{numbered.number:02d}-{slug(block.key)}.csv", table_csv(block))
    return folder
