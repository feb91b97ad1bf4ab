"""Architecture: layer table and graph (placeholder until issue 3 lands)."""

from __future__ import annotations

from typing import ClassVar

from auditor.config import RunOptions
from auditor.context import AuditContext
from auditor.section import Section


class Architecture:
    name: ClassVar[str] = "architecture"
    title: ClassVar[str] = "Architecture"
    summary: ClassVar[str] = "Layer table with shapes, parameters and MACs, and a graph of the network."

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        return Section(self.name, self.title, text="Not implemented yet.")
