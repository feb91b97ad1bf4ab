"""What a technique returns: a Section of plain data (text, figures, tables, cards, metrics).

Techniques never render HTML; the report layer never runs the model. Everything here is JSON-able
except image bytes, which report.json replaces by figure file names and captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass
class Report:
    """Everything the renderers need: the audit record and the sections, in order."""

    record: dict[str, Any]
    sections: list[Section]

    @property
    def failed(self) -> list[Section]:
        return [s for s in self.sections if s.error is not None]
