"""figures/figures.tex: every figure and table of the report for a LaTeX document, needing only graphicx and booktabs.

A thesis copies the `figures/` folder beside its main file and writes `\\input{figures/figures.tex}`.
Figures come in report order, each a `figure` environment with the report's caption (LaTeX-escaped) and
`\\label{fig:NN-subject}`; each table a booktabs `table` environment, folded tables in full, a long
table split into environments of at most ROWS_PER_TABLE rows (the later ones "continued", under the
same number), a wide one scaled to the line width with graphicx's \\resizebox.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from auditor.document import Report, Table
from auditor.report.html import format_number
from auditor.report.numbering import Numbered, numbered_blocks

ROWS_PER_TABLE = 40
FLOATS_PER_FLUSH = 10  # a \clearpage after this many floats: LaTeX holds at most 18 unplaced floats
WIDE_TABLE = 90  # characters across a table's widest cells beyond which it is scaled to the line width

_SPECIAL = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    "<": r"\ensuremath{<}", ">": r"\ensuremath{>}", "|": r"\ensuremath{|}", '"': "''",
    "\u00a0": "~", "×": r"\ensuremath{\times}", "✓": r"\ensuremath{\surd}", "✗": "x", "→": r"\ensuremath{\rightarrow}",
    "←": r"\ensuremath{\leftarrow}", "↔": r"\ensuremath{\leftrightarrow}", "≥": r"\ensuremath{\geq}",
    "≤": r"\ensuremath{\leq}", "≠": r"\ensuremath{\neq}", "≈": r"\ensuremath{\approx}", "±": r"\ensuremath{\pm}",
    "−": r"\ensuremath{-}", "–": "--", "—": "---", "…": r"\ldots{}", "·": r"\ensuremath{\cdot}",
    "°": r"\ensuremath{^\circ}", "²": r"\ensuremath{^2}", "³": r"\ensuremath{^3}", "µ": r"\ensuremath{\mu}",
    "μ": r"\ensuremath{\mu}", "α": r"\ensuremath{\alpha}", "β": r"\ensuremath{\beta}", "σ": r"\ensuremath{\sigma}",
    "‘": "`", "’": "'", "“": "``", "”": "''", "•": r"\ensuremath{\bullet}", "∞": r"\ensuremath{\infty}",
    "√": r"\ensuremath{\surd}", "Δ": r"\ensuremath{\Delta}", "§": r"\S{}", "ß": r"\ss{}", "æ": r"\ae{}",
    "ø": r"\o{}", "Ø": r"\O{}", "å": r"\aa{}", "Å": r"\AA{}", "œ": r"\oe{}", "ł": r"\l{}", "Ł": r"\L{}",
}
_ACCENTS = {"\u0301": "'", "\u0300": "`", "\u0308": '"', "\u0302": "^", "\u0303": "~", "\u0304": "=",
            "\u0327": "c", "\u030c": "v", "\u0306": "u", "\u030a": "r", "\u0328": "k", "\u0307": "."}
_BREAK_AFTER = re.compile(r"(?<=[._/])(?=\S)")


def escape(text: Any) -> str:
    """Text as LaTeX that pdflatex compiles with no package: specials escaped, symbols as LaTeX commands,
    accented letters as accent commands, anything else as its ASCII decomposition or "?"; a line may break
    after "." "_" "/" inside a word (layer names, paths)."""
    out = []
    for piece in re.split(r"(\s+)", str(text)):
        parts = _BREAK_AFTER.split(piece) if len(piece) > 12 else [piece]
        out.append(r"\allowbreak{}".join("".join(_char(c) for c in part) for part in parts))
    return "".join(out)


def _char(c: str) -> str:
    if c in _SPECIAL:
        return _SPECIAL[c]
    if c.isascii():
        return " " if c in "\t\r\n" else c
    base, *marks = unicodedata.normalize("NFD", c)
    if base.isascii() and marks and all(m in _ACCENTS for m in marks):
        word = base if base not in "ij" else "\\" + base  # dotless i and j under an accent
        for mark in marks:
            command = _ACCENTS[mark]
            word = f"\\{command}{{{word}}}"
        return word
    ascii_form = unicodedata.normalize("NFKD", c).encode("ascii", "ignore").decode("ascii")
    return "".join(_SPECIAL.get(a, a) for a in ascii_form) or "?"


def label(kind: str, number: int, key: str) -> str:
    from auditor.report.files import slug

    return f"{'fig' if kind == 'Figure' else 'tab'}:{number:02d}-{slug(key)}"


def _width(inches: float | None) -> str:
    """The includegraphics width: the figure's print size, at most the line width."""
    if inches is None:
        return r"\linewidth"
    return rf"\ifdim {inches:.2f}in<\linewidth {inches:.2f}in\else\linewidth\fi"


def figure_environment(numbered: Numbered, path: str, inches: float | None) -> str:
    caption = escape(numbered.block.caption)
    return (f"\\begin{{figure}}[htbp]\n  \\centering\n"
            f"  \\includegraphics[width={_width(inches)},height=0.8\\textheight,keepaspectratio]{{{path}}}\n"
            f"  \\caption{{{caption}}}\n  \\label{{{label('Figure', numbered.number, numbered.block.key)}}}\n"
            f"\\end{{figure}}\n")


def _cell(value: Any) -> str:
    return escape(format_number(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _row(values: Sequence[Any]) -> str:
    return "    " + " & ".join(_cell(v) for v in values) + r" \\" + "\n"


def table_environments(numbered: Numbered) -> list[str]:
    """A booktabs table, in full; split into ROWS_PER_TABLE-row environments when longer."""
    table = numbered.block
    assert isinstance(table, Table)
    columns = len(table.columns)
    body = [list(r) + [None] * (columns - len(r)) for r in table.rows]
    align = "".join("r" if any(_is_number(r[i]) for r in body) and all(r[i] is None or _is_number(r[i])
                                                                      for r in body) else "l"
                    for i in range(columns))
    widest = sum(max([len(format_number(v)) for v in [table.columns[i], *(r[i] for r in body)]] or [1])
                 for i in range(columns))
    wide = widest > WIDE_TABLE
    chunks = [body[i:i + ROWS_PER_TABLE] for i in range(0, len(body), ROWS_PER_TABLE)] or [[]]
    environments = []
    for part, rows in enumerate(chunks):
        last = part == len(chunks) - 1
        caption = escape(table.caption) + (" (continued)" if part else "")
        lines = ["\\begin{table}[htbp]\n  \\centering\n"]
        if part:
            lines.append("  \\addtocounter{table}{-1}\n")
        lines.append(f"  \\caption{{{caption}}}\n")
        if not part:
            lines.append(f"  \\label{{{label('Table', numbered.number, table.key)}}}\n")
        lines.append("  \\smallskip\n  \\small\n")  # a caption above a table: LaTeX puts no space below it
        lines.append("  \\resizebox{\\linewidth}{!}{%\n" if wide else "")
        lines.append(f"  \\begin{{tabular}}{{@{{}}{align}@{{}}}}\n    \\toprule\n")
        lines.append(_row(table.columns))
        lines.append("    \\midrule\n")
        lines += [_row(r) for r in rows]
        if last and table.footer:
            lines.append("    \\midrule\n")
            lines.append(_row(list(table.footer) + [None] * (columns - len(table.footer))))
        lines.append("    \\bottomrule\n  \\end{tabular}" + ("}\n" if wide else "\n"))
        lines.append("\\end{table}\n")
        environments.append("".join(lines))
    return environments


def render_latex(report: Report, files: dict[int, tuple[str, float | None]]) -> str:
    """figures.tex: `files` maps each figure's number to its file name in figures/ and its print width
    in inches (None: the line width)."""
    model = report.record.get("model", {}).get("name", "the model") if report.record else "the model"
    head = ("% figures.tex, written by auditor --figures: every figure and table of the audit report of "
            f"{_comment(model)}, in report order.\n"
            "% Needs only \\usepackage{graphicx} and \\usepackage{booktabs} in the preamble.\n"
            "% Copy the figures/ folder beside the main .tex file and write \\input{figures/figures.tex}.\n"
            "% Labels: fig:NN-subject and tab:NN-subject, NN the number in the report. Long tables are split\n"
            f"% into table environments of {ROWS_PER_TABLE} rows, wide ones scaled to the line width; a "
            f"\\clearpage follows every {FLOATS_PER_FLUSH} floats.\n\n")
    parts, floats = [head], 0
    for numbered in numbered_blocks(report):
        if isinstance(numbered.block, Table):
            environments = table_environments(numbered)
        else:
            name, inches = files[numbered.number]
            environments = [figure_environment(numbered, f"figures/{name}", inches)]
        for environment in environments:
            parts.append(environment + "\n")
            floats += 1
            if floats % FLOATS_PER_FLUSH == 0:
                parts.append("\\clearpage\n\n")
    return "".join(parts)


def _comment(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", str(text))
