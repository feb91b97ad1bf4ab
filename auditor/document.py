"""What a technique returns: a Section of plain data (text, figures, tables, cards, metrics).

Techniques never render HTML; the report layer never runs the model. Everything here is JSON-able
except image bytes, which report.json replaces by figure file names and captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, Union


@dataclass
class Figure:
    """One numbered figure: an encoded image (PNG, JPEG or SVG) and a caption usable in a thesis."""

    key: str  # stable slug, part of the figure's file name: "predictions-coffee"
    caption: str
    data: bytes
    mime: str  # "image/png", "image/jpeg" or "image/svg+xml"
    alt: str = ""
    width: str = ""  # CSS width hint, e.g. "60%"; empty lets the image fill the column

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg"}[self.mime]


@dataclass
class Table:
    """A numbered table; `footer` holds totals. Cells are str, int, float or None."""

    key: str
    caption: str
    columns: list[str]
    rows: list[list[Any]]
    footer: list[Any] | None = None
    # A folded table is one click away in the HTML (a closed <details>) and a one-line pointer in the
    # PDF; it stays whole in report.json and the CSV. `unfold` says how to print it, e.g. "--table-depth 0".
    folded: bool = False
    unfold: str = ""


@dataclass
class Bar:
    """A labelled value in [0, 1] drawn as a bar (e.g. a class probability)."""

    label: str
    value: float
    highlight: bool = False  # e.g. the true class


@dataclass
class Card:
    """An image with a title, a verdict badge and bars: one image's predictions, say."""

    title: str
    image: bytes
    mime: str
    bars: list[Bar]
    lines: list[str] = field(default_factory=list)
    badge: str = ""
    badge_ok: bool | None = None  # True green, False red, None neutral


@dataclass
class Cards:
    """A numbered figure made of cards."""

    key: str
    caption: str
    cards: list[Card]


Block = Union[Figure, Table, Cards]


class Heading(Protocol):
    """What a section builder needs of its technique: the CLI key and the heading."""

    name: str
    title: str


@dataclass
class Section:
    """One technique's part of the report."""

    technique: str
    title: str
    text: str = ""  # plain-text paragraphs separated by blank lines
    blocks: list[Block] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # caveats shown under the text
    error: str | None = None  # one line: what went wrong, when the technique raised
    error_detail: str | None = None  # the traceback, for plugin authors
    seconds: float = 0.0
    # arrays kept for later in maps.safetensors (auditor.report.maps), not shown: "<image sha256>/<method>" ->
    # a numpy array (the CAM section's top-class maps, float16); each key once across the sections
    arrays: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One line at the top of the report: what the audit found, the number it cites and the rule behind it."""

    text: str  # one sentence, citing its number
    section: str  # the technique whose section holds the evidence (its anchor), or "appendix"
    value: Any  # the number (or names) the sentence cites, for report.json
    rule: str  # when the finding is made, stated beside it


@dataclass
class Report:
    """Everything the renderers need: the audit record, the sections in order, and the findings over them."""

    record: dict[str, Any]
    sections: list[Section]
    findings: list[Finding] = field(default_factory=list)  # auditor.sections.findings, once every section ran

    @property
    def failed(self) -> list[Section]:
        return [s for s in self.sections if s.error is not None]

    def _repr_html_(self) -> str:
        """Jupyter shows the report inline: the same HTML as report.html (auditor.report.html.render_html)."""
        from auditor.report.html import render_html  # the renderers load only when asked for

        return render_html(self)

    def save(self, out: str | PathLike[str], *, pdf: bool = True, figures: bool = False) -> dict[str, Path]:
        """Write report.html, report.json (and report.pdf, figures/) into `out`, as `auditor run` does
        (auditor.report.write_report: all or nothing); the written files by kind."""
        from auditor.report import write_report

        return write_report(self, out, pdf=pdf, figures=figures)
