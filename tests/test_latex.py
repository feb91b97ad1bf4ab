"""--figures' figures.tex compiled by pdflatex in a minimal report document, --figure-dpi, and --colormap."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_models import tiny
from PIL import Image

from auditor import load_model
from auditor.cli import cli
from auditor.document import Figure, Report, Section, Table
from auditor.report import write_report
from auditor.report.files import write_figures
from auditor.report.html import render_html
from auditor.report.latex import ROWS_PER_TABLE, escape
from auditor.report.numbering import numbered_blocks
from tests import toolkit

# class names with every LaTeX special and some unicode: they reach captions and table cells
CLASSES = ["cat & dog", "50% off", "a_b #1", "x^2 {y} ~z", "café ✓ → ×"]
THESIS = "\\documentclass{report}\n\\usepackage{graphicx}\n\\usepackage{booktabs}\n\\begin{document}\n" \
         "\\chapter{Audit}\n\\input{figures/figures.tex}\n\\end{document}\n"


def labelled_folders(root: Path) -> Path:
    """Two noise images per class, in folders named after the classes (so performance has labels)."""
    generator = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(generator.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def tiny_named():
    loaded = load_model(tiny(), input_size=32)
    loaded.class_names = list(CLASSES)
    return loaded


def test_escape_leaves_no_bare_special() -> None:
    text = escape("a & b % c $ d # e _ f { g } h ~ i ^ j \\ k × ✓ → ≥ é ü “q” — …")
    assert text.isascii()
    assert text == (r"a \& b \% c \$ d \# e \_ f \{ g \} h \textasciitilde{} i \textasciicircum{} j "
                    r"\textbackslash{} k \ensuremath{\times} \ensuremath{\surd} \ensuremath{\rightarrow} "
                    r"\ensuremath{\geq} \'{e} \"{u} ``q'' --- \ldots{}")
    assert escape("features.12.conv_layer") == r"features.\allowbreak{}12.\allowbreak{}conv\_\allowbreak{}layer"


@pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
                    reason="needs pdflatex and pdftotext: apt-get install texlive-latex-base "
                           "texlive-latex-recommended poppler-utils")
def test_figures_tex_compiles_in_a_report_with_every_caption_and_figure(tmp_path: Path) -> None:
    report = toolkit.audit(tiny_named(), (), images=labelled_folders(tmp_path / "images"), max_steps=2,
                           colormap="cividis", figure_dpi=100)
    assert not report.failed
    written = write_report(report, tmp_path / "out", pdf=False, figures=True)
    thesis = tmp_path / "thesis"
    shutil.copytree(written["figures"], thesis / "figures")
    (thesis / "main.tex").write_text(THESIS)
    tex = (thesis / "figures" / "figures.tex").read_text()
    assert "needs only \\usepackage{graphicx} and \\usepackage{booktabs}" in tex.splitlines()[1].lower()
    assert tex.isascii()

    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=thesis,
                          capture_output=True, text=True, timeout=120, check=False)
    log = (thesis / "main.log").read_text(errors="replace")
    assert done.returncode == 0, "\n".join(line for line in log.splitlines() if line.startswith("!")) or log[-3000:]
    assert "Missing character" not in log and "Unicode character" not in log

    numbered = list(numbered_blocks(report))
    figures = [n for n in numbered if n.kind == "Figure"]
    tables = [n for n in numbered if n.kind == "Table"]
    assert {n.section.technique for n in numbered} >= {"predictions", "performance", "trust", "architecture", "cam"}
    includes = re.findall(r"\\includegraphics\[[^]]*\]\{(figures/[^}]+)\}", tex)
    assert len(includes) == len(figures)
    for path, n in zip(includes, figures):  # every file, in report order, is there and pdflatex read it
        assert path.startswith(f"figures/fig{n.number:02d}-") and (thesis / path).is_file()
        assert f"<{path}" in log.replace("\n", "")
    vector = [n for n in figures if isinstance(n.block, Figure) and n.block.mime == "image/svg+xml"]
    assert {n.block.key for n in vector} >= {"architecture-graph", "performance-confusion"}
    for n in vector:
        pdf = next(p for p in includes if p.startswith(f"figures/fig{n.number:02d}-"))
        assert pdf.endswith(".pdf") and (thesis / pdf).read_bytes().startswith(b"%PDF")
        assert (thesis / pdf).with_suffix(".svg").is_file()

    aux = (thesis / "main.aux").read_text()
    labels = re.findall(r"\\newlabel\{((?:fig|tab):[^}]+)\}", aux)
    assert [f"fig:{n.number:02d}-" for n in figures] == [label[:7] for label in labels if label.startswith("fig:")]
    assert sorted({label[:7] for label in labels if label.startswith("tab:")}) == [
        f"tab:{n.number:02d}-" for n in tables]

    text = subprocess.run(["pdftotext", str(thesis / "main.pdf"), "-"], capture_output=True, text=True,
                          check=True).stdout
    flat = unicodedata.normalize("NFC", re.sub(r"\s+", " ", re.sub(r"-\n", "", text)))
    for n in numbered:  # every caption's words, in the order they have in the report
        words = [w for w in re.findall(r"[A-Za-z]{5,}", n.block.caption)][:6]
        assert all(w in flat for w in words), (n.block.key, [w for w in words if w not in flat])
    # OT1 fonts: pdftotext reads the printed ^ and ~ as accents and _ as a rule (a space)
    assert "cat & dog" in flat and "50% off" in flat and "x\u02c62 {y} \u02dcz" in flat and "b #1" in flat
    assert "café" in flat and "→ ×" in flat and "√" in flat
    assert "cividis colours, from low to high along the colour bar" in flat

    raster = [p for p in includes if p.endswith((".png", ".jpg"))]
    assert all(Image.open(thesis / p).info.get("dpi", (0,))[0] == pytest.approx(100, abs=0.5) for p in raster)


def test_long_and_folded_tables_are_written_in_full(tmp_path: Path) -> None:
    rows = [[f"layer_{i}", i, i / 7] for i in range(2 * ROWS_PER_TABLE + 5)]
    table = Table("layers", "Every layer & its size.", ["name", "n", "share"], rows, footer=["total", 1, None],
                  folded=True)
    tex = (write_figures(Report({}, [Section("x", "X", blocks=[table])]), tmp_path) / "figures.tex").read_text()
    assert tex.count("\\begin{table}") == 3 and tex.count("(continued)") == 2
    assert tex.count("\\label{tab:01-layers}") == 1 and tex.count("\\addtocounter{table}{-1}") == 2
    assert all(f"layer\\_{i} &" in tex for i in range(len(rows)))
    assert "\\begin{tabular}{@{}lrr@{}}" in tex and "total & 1 &" in tex


def test_figure_dpi_rescales_raster_files_to_their_print_size(tmp_path: Path) -> None:
    image = Image.new("RGB", (480, 240), "white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    figure = Figure("wide", "A 480 px figure.", buffer.getvalue(), "image/png")
    folder = write_figures(Report({}, [Section("x", "X", blocks=[figure])]), tmp_path, dpi=192)
    written = Image.open(folder / "fig01-wide.png")
    assert written.size == (960, 480) and written.info["dpi"][0] == pytest.approx(192, abs=0.5)  # 5 in at 192 dpi
    assert "5.00in" in (folder / "figures.tex").read_text()


def test_colormap_reaches_overlays_colour_bars_captions_and_the_record(tmp_path: Path) -> None:
    jet = toolkit.audit(tiny(), "cam")
    cividis = toolkit.audit(tiny(), "cam", colormap="cividis")
    jet_caption, cividis_caption = (r.sections[0].blocks[0].caption for r in (jet, cividis))
    assert "jet colours, red where the class score rises most, blue least" in jet_caption
    assert "cividis colours, from low to high along the colour bar" in cividis_caption and " red " not in cividis_caption
    assert jet.sections[0].blocks[0].data != cividis.sections[0].blocks[0].data
    picture = np.asarray(Image.open(io.BytesIO(cividis.sections[0].blocks[0].data)).convert("RGB"))
    bar = picture[-40:].reshape(-1, 3).astype(int)  # the colour bar at the bottom: no saturated jet red
    assert not ((bar[:, 0] > 200) & (bar[:, 1] < 60) & (bar[:, 2] < 60)).any()
    assert cividis.record["options"]["colormap"] == "cividis"
    assert re.search(r"<dt>colormap</dt><dd><code>cividis</code>", render_html(cividis))


def test_an_unknown_colormap_is_one_line_naming_close_ones(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "--colormap", "Cividis_r2", "-o", str(tmp_path), "--no-pdf"])
    assert result.exit_code == 2
    message = [line for line in result.output.splitlines() if "colormap" in line.lower() or "colour map" in line]
    assert len(message) == 1 and "cividis" in message[0], result.output
