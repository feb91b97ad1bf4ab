"""The architecture section: layer table and graph (auditor.techniques.architecture does the work)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from auditor.options import Option

if TYPE_CHECKING:
    from auditor.config import RunOptions
    from auditor.context import AuditContext
    from auditor.section import Section


class Architecture:
    name: ClassVar[str] = "architecture"
    title: ClassVar[str] = "Architecture"
    summary: ClassVar[str] = "Layer table with shapes, parameters and MACs, and a graph of the network."
    options: ClassVar[tuple[Option, ...]] = (
        Option("graph-depth", "Architecture graph: how many module levels to expand (1 collapses repeated "
                              "blocks).", default=1, kind="int", low=1, high=20, metavar="N"),
        Option("table-depth", "Architecture table: how many module levels to show, each row with the totals of "
                              "what it holds (1: the graph's top level, repeated blocks collapsed); the full "
                              "per-module table is folded in the HTML and left out of the PDF, and 0 shows it "
                              "instead.", default=1, kind="int", low=0, high=20, metavar="N"),
    )

    def run(self, ctx: AuditContext, options: RunOptions) -> Section:
        from auditor.techniques.architecture import architecture_section

        settings = options.of(self)
        return architecture_section(ctx, settings["graph_depth"], options.tensorboard, settings["table_depth"])
