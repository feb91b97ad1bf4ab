"""A Graph drawn: box labels, DOT (wrapped into columns when tall), and inline-ready SVG.

Sizes are CSS px (the DOT says dpi=96). The target is an A4 page: a figure at most the text column
wide and two thirds of the text block tall, shrunk by the page when wider.
"""

from __future__ import annotations

import math

from auditor.techniques.architecture.graph import Graph, GraphBox, neighbours
from auditor.techniques.architecture.svg import inline_svg, render_svg, size_px

PAGE_WIDTH_PX = 680.0  # an A4 text column (515 pt)
PAGE_HEIGHT_PX = 660.0  # two thirds of an A4 text block: room for the caption and some text
FONT = "DejaVu Sans"  # Graphviz knows its metrics, which are wide: text fits whatever sans-serif the viewer has
FONT_FAMILY = "DejaVu Sans,Verdana,sans-serif"
FILL = {"input": "#e5e7eb", "layer": "#dbeafe", "block": "#dcfce7", "op": "#fef9c3"}


def type_summary(types: list[str]) -> str:
    """["Bottleneck"] * 3 -> "3 × Bottleneck"; ["Conv2d", "ReLU"] * 2 -> "2 × (Conv2d · ReLU)"."""
    count = len(types)
    for period in range(1, count // 2 + 1):
        if count % period == 0 and types == types[:period] * (count // period):
            unit = " · ".join(types[:period])
            return f"{count // period} × {unit if period == 1 else f'({unit})'}"
    return " · ".join(types)


def box_title(box: GraphBox, whole_parent: bool, root_name: str) -> str:
    """What a box shows first: a module name, its parent's when it holds all of it, or a range of names."""
    names = [name or root_name for name in box.names]
    if len(names) == 1:
        return names[0]
    if whole_parent:
        return box.parent
    last = [name.rpartition(".")[2] for name in names]
    if box.parent and all(part.isdigit() for part in last):
        return f"{box.parent}.{last[0]}–{last[-1]}"
    if len(names) <= 3:
        return " · ".join([names[0], *last[1:]])
    return f"{names[0]} – {last[-1]}"


def wrap_parts(text: str, width: int = 34) -> list[str]:
    """Break "a · b · c" into lines of at most `width` characters after a dot (a part never breaks)."""
    lines: list[str] = []
    for part in text.split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        elif lines:
            lines[-1] += " ·"
            lines.append(part)
        else:
            lines.append(part)
    return lines


def box_label(box: GraphBox, whole_parent: bool, root_name: str) -> str:
    title = box_title(box, whole_parent, root_name)
    lines = wrap_parts(title)
    summary = type_summary(box.types)
    if summary != title:
        lines.extend(wrap_parts(summary))
    if box.detail:
        lines.append(box.detail)
    lines.append(box.shape)
    return "\n".join(lines)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def ranks(graph: Graph) -> list[int]:
    """Longest-path rank of each box, as dot would place it in a single column."""
    predecessors, _ = neighbours(graph)
    found: list[int] = []
    for i in range(len(graph.boxes)):
        found.append(max((found[p] + 1 for p in predecessors[i]), default=0))
    return found


def to_dot(graph: Graph, root_name: str, columns: int = 1) -> str:
    """DOT source; with columns > 1 a tall graph wraps into side-by-side columns of equal rank count.

    Edges that jump to the next column do not constrain ranks, the first box of each column is
    pinned to the top row, left to right, and a column's boxes share a group so its chain runs straight.
    """
    rank = ranks(graph)
    per_column = math.ceil((max(rank, default=0) + 1) / columns)
    column = [r // per_column for r in rank]
    children: dict[str, int] = {}
    for box in graph.boxes:
        children[box.parent] = children.get(box.parent, 0) + len(box.names)
    drawn = {name for box in graph.boxes for name in box.names}
    lines = [
        "digraph architecture {",
        f'  graph [rankdir={graph.direction}, dpi=96, nodesep=0.2, ranksep=0.25, pad=0.05, fontname="{FONT}"];',
        f'  node [shape=box, style="rounded,filled", fontname="{FONT}", fontsize=10, color="#4b5563", '
        'penwidth=0.8, margin="0.1,0.04", height=0.3];',
        '  edge [color="#4b5563", penwidth=0.8, arrowsize=0.6];',
    ]
    for i, box in enumerate(graph.boxes):
        whole_parent = bool(box.parent) and box.parent not in drawn and len(box.names) == children[box.parent]
        label = box_label(box, whole_parent, root_name)
        lines.append(f"  b{i} [label={_quote(label)}, fillcolor={_quote(FILL[box.kind])}, group=c{column[i]}];")
    for source, target in sorted(graph.edges):
        wrap = " [constraint=false]" if column[source] != column[target] else ""
        lines.append(f"  b{source} -> b{target}{wrap};")
    heads = _column_heads(rank, per_column, columns)
    if len(heads) > 1:
        lines.append("  { rank=same; " + " ".join(f"b{i};" for i in heads) + " }")
        lines.append("  " + " -> ".join(f"b{i}" for i in heads) + " [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _column_heads(rank: list[int], per_column: int, columns: int) -> list[int]:
    """The first box at the top rank of each column."""
    return [rank.index(c * per_column) for c in range(columns) if c * per_column in rank]


def choose_columns(width: float, height: float, most: int = 12) -> int:
    """How many columns a one-column layout of this size should wrap into to be largest on an A4 page.

    Wrapping divides the height and multiplies the width; the page shrinks whatever is too wide.
    """
    def scale(columns: int) -> float:
        return min(1.0, PAGE_WIDTH_PX / (width * columns * 1.1), PAGE_HEIGHT_PX * columns / height)
    return max(range(1, most + 1), key=lambda c: (round(scale(c), 3), -c))


def graph_svg(graph: Graph, root_name: str, id_prefix: str) -> str:
    """Inline-ready SVG of `graph`; a tall top-to-bottom graph is laid out again in columns."""
    svg = render_svg(to_dot(graph, root_name))
    if graph.direction == "TB":
        columns = choose_columns(*size_px(svg))
        if columns > 1:
            svg = render_svg(to_dot(graph, root_name, columns))
    return inline_svg(svg.replace(f'font-family="{FONT}"', f'font-family="{FONT_FAMILY}"'), id_prefix)
