"""Figure and table numbers, assigned once in report order so HTML, PDF, JSON and files agree."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from auditor.document import Block, Report, Section, Table


@dataclass(frozen=True)
class Numbered:
    section: Section
    block: Block
    kind: str  # "Figure" or "Table"
    number: int

    @property
    def anchor(self) -> str:
        return f"{self.kind.lower()}-{self.number}"


def numbered_blocks(report: Report) -> Iterator[Numbered]:
    counters = {"Figure": 0, "Table": 0}
    for section in report.sections:
        for block in section.blocks:
            kind = "Table" if isinstance(block, Table) else "Figure"
            counters[kind] += 1
            yield Numbered(section, block, kind, counters[kind])
