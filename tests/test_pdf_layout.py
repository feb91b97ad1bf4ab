"""The PDF keeps every column and cell of wide tables (also in the default report, conftest's
default_report), and the architecture section stays short.

Word boxes come from poppler's `pdftotext -bbox` (apt-get install poppler-utils), so a column pushed
past the page edge is caught even when a PDF reader would still extract its text.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from auditor import RunOptions, run_audit, write_report
from auditor.inputs.images import BUNDLED_PHOTOS

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("pdftotext") is None,
                                 reason="needs pdftotext: apt-get install poppler-utils")]

TEXT_RIGHT_PT = 595.28 - 14 / 25.4 * 72  # A4 width less the 14 mm right margin of report.css's @page
HEADERS = {"module", "type", "parameters", "output", "shape", "trainable", "share", "MACs"}  # and "hyper-…"
WORD = re.compile(r'<word xMin="([-\d.]+)" yMin="([-\d.]+)" xMax="([-\d.]+)" yMax="[-\d.]+">(.*?)</word>')


def architecture_report(folder: Path, model: str, size: int | None, table_depth: int) -> tuple[Path, dict[str, Any]]:
    options = RunOptions(model=model, weights="none", images=(str(BUNDLED_PHOTOS / "chelsea.png"),), input_size=size,
                         device="cpu", techniques=("architecture",), settings={"table_depth": table_depth})
    written = write_report(run_audit(options=options), folder, pdf=True)
    return written["pdf"], json.loads(written["json"].read_text())


def page_lines(pdf: Path) -> list[list[list[tuple[float, float, str]]]]:
    """Each page's lines, top to bottom, each a list of (xMin, xMax, word) left to right; zero-width spaces
    (WeasyPrint's <wbr>) dropped."""
    text = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], check=True, capture_output=True, text=True).stdout
    pages = []
    for page in text.split("<page ")[1:]:
        lines: dict[float, list[tuple[float, float, str]]] = {}
        for x_min, y_min, x_max, word in WORD.findall(page):
            lines.setdefault(round(float(y_min)), []).append(
                (float(x_min), float(x_max), html.unescape(word).replace("\u200b", "")))
        pages.append([sorted(lines[y]) for y in sorted(lines)])
    return pages


def rows_in_order(rows: list[list[Any]], lines: list[list[tuple[float, float, str]]]) -> list[str]:
    """Names of rows with no line, after the previous row's, that starts with the start of the row's name
    and holds its parameters, trainable parameters and, rightmost, its MACs: rows or cells the PDF lost."""
    missing, position = [], 0
    for row in rows:
        name, numbers = str(row[0]), [f"{v:,}" for v in (row[4], row[5], row[7])]
        found = next((i for i in range(position, len(lines)) if name.startswith(lines[i][0][2])
                      and set(numbers) <= {w for _, _, w in lines[i]} and lines[i][-1][2] == numbers[-1]), None)
        if found is None:
            missing.append(name)
        else:
            position = found + 1
    return missing


def past_the_margin(pages: list[list[list[tuple[float, float, str]]]]) -> list[tuple[float, float, str]]:
    """The words that end right of the text area: columns pushed off the page."""
    return [word for page in pages for line in page for word in line if word[1] > TEXT_RIGHT_PT + 0.5]  # rounding


def full_table(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(b for b in manifest["sections"][0]["blocks"] if b.get("key") == "architecture-layers")


def row_of(table: dict[str, Any], name: str) -> list[Any]:
    return next(r for r in table["rows"] if r[0] == name)


@pytest.mark.parametrize("model, size, known", [
    # conv_proj: (768·3·16·16 + 768) weights and biases at 14×14 positions; heads.head: 768·1000 + 1000 once
    ("vit_b_16", None, {"conv_proj": (768 * 3 * 16 * 16 + 768) * 14 * 14, "heads.head": 768 * 1000 + 1000}),
    # stem.0: 3→32, 3×3, no bias, stride 2 at 64 px -> 32×32 positions; fc: 440·1000 + 1000 once
    ("regnet_y_400mf", 64, {"stem.0": 32 * 3 * 3 * 3 * 32 * 32, "fc": 440 * 1000 + 1000}),
])
def test_full_layer_table_keeps_every_column_and_cell(tmp_path: Path, model: str, size: int | None,
                                                      known: dict[str, int]) -> None:
    pdf, manifest = architecture_report(tmp_path, model, size, table_depth=0)
    pages = page_lines(pdf)
    overflow = past_the_margin(pages)
    assert not overflow, overflow[:5]
    table_pages = [{w for line in page for _, _, w in line} for page in pages
                   if any(line[0][2] == "module" for line in page)]  # pages with the table's header
    assert len(table_pages) >= 3
    assert all(HEADERS <= page and any(w.startswith("hyper-") for w in page) for page in table_pages)
    table = full_table(manifest)
    assert not table["folded"]
    lines = [line for page in pages for line in page]
    assert rows_in_order(table["rows"] + [table["footer"]], lines) == []
    for name, macs in known.items():
        assert row_of(table, name)[-1] == macs and not rows_in_order([row_of(table, name)], lines)


def test_densenet_architecture_section_is_short_and_loses_nothing(tmp_path: Path) -> None:
    pdf, manifest = architecture_report(tmp_path, "densenet121", 64, table_depth=1)
    assert len(PdfReader(pdf).pages) <= 7
    structure, table = (b for b in manifest["sections"][0]["blocks"] if b["type"] == "table")
    assert len(structure["rows"]) == 13 and len(table["rows"]) == 366 and table["folded"]
    assert structure["footer"] == table["footer"]  # the structure rows partition the full table
    text = "".join(w for page in page_lines(pdf) for line in page for _, _, w in line)
    assert "features.denseblock3" in text and "Notprinted(366rows)" in text
    page = (tmp_path / "report.html").read_text()
    folded = page[page.index('<details class="folded">'):]
    assert folded.count("<tr>") >= 366 + 1  # every row, and the header, one click away


def test_the_default_report_keeps_every_word_and_structure_row_on_the_page(default_report) -> None:
    """The default audit's PDF (conftest): every section's tables and captions inside the margins, and
    the architecture's structure table whole, every row with its numbers."""
    _, written = default_report
    pages = page_lines(written["pdf"])
    assert sum(len(line) for page in pages for line in page) > 500  # words were read: not a vacuous pass
    overflow = past_the_margin(pages)
    assert not overflow, overflow[:5]
    manifest = json.loads(written["json"].read_text())
    architecture = next(s for s in manifest["sections"] if s["technique"] == "architecture")
    structure = next(b for b in architecture["blocks"] if b.get("key") == "architecture-structure")
    lines = [line for page in pages for line in page]
    assert rows_in_order(structure["rows"] + [structure["footer"]], lines) == []
