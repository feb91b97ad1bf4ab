"""The network as a small graph of boxes, as DOT: torch.fx data flow, or the module tree as a fallback.

At depth 1 each box is a top-level module call (containers such as nn.Sequential are looked through,
so ResNet's layer1 shows its Bottlenecks); deeper levels open blocks up. Consecutive boxes in one
parent with the same output shape, joined by a single edge, collapse into one: "3 × Bottleneck" for
repeated blocks, "Conv2d · BatchNorm2d · ReLU" for a chain of layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from auditor.layer_table import Calls, format_shape, hyperparameters
from auditor.svg import inline_svg, render_svg, size_px

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
PAGE_WIDTH_PX = 680.0  # an A4 text column (515 pt), in CSS px
PAGE_HEIGHT_PX = 660.0  # two thirds of an A4 text block: a figure that leaves room for its caption and text
FONT = "DejaVu Sans"  # Graphviz knows its metrics, which are wide: text fits whatever sans-serif the viewer has
FONT_FAMILY = "DejaVu Sans,Verdana,sans-serif"
FILL = {"input": "#e5e7eb", "layer": "#dbeafe", "block": "#dcfce7", "op": "#fef9c3"}


@dataclass
class Box:
    """One box: a module call, an operation, or a collapsed run of them."""

    names: list[str]  # qualified module names (operation names for operations), one per member
    types: list[str]  # class names (operation names for operations), one per member
    kind: str  # "input", "layer", "block" or "op"
    parent: str  # qualified name of the module whose forward runs the members
    shape: str  # output shape, as format_shape writes it
    detail: str = ""  # a single layer's hyper-parameters


@dataclass
class Graph:
    """Boxes in topological order and edges between their indices."""

    boxes: list[Box]
    edges: set[tuple[int, int]] = field(default_factory=set)
    direction: str = "TB"


def is_layer(module: nn.Module) -> bool:
    """Drawn as one box at any depth: no children, or a subclass of a torch.nn layer (a padded Conv2d)."""
    if not any(True for _ in module.children()):
        return True
    return any(cls.__module__.startswith("torch.nn.modules") and cls not in (nn.Module, *CONTAINERS)
               for cls in type(module).__mro__)


def trace(module: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Symbolically trace `module` and record each node's output shape on `example`.

    Raises whatever torch.fx raises for code it cannot trace (data-dependent control flow, say).
    """
    traced = torch.fx.symbolic_trace(module)
    with torch.no_grad():
        ShapeProp(traced).propagate(example)
    return traced


def _tensor_shape(meta: Any) -> tuple[int, ...] | None:
    """The first tensor shape in ShapeProp's metadata for a node (nested for tuple outputs)."""
    if hasattr(meta, "shape"):
        return tuple(meta.shape)
    if isinstance(meta, (tuple, list)):
        return next((s for s in map(_tensor_shape, meta) if s is not None), None)
    if isinstance(meta, Mapping):
        return _tensor_shape(list(meta.values()))
    return None


def _operation_name(node: torch.fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", node.name)


def _unit(node: torch.fx.Node, module: nn.Module, depth: int) -> tuple[str, Box]:
    """The box a drawn fx node belongs to at `depth`, and that box's key (one per module call)."""
    shape = format_shape(_tensor_shape(node.meta.get("tensor_meta")))
    if node.op == "placeholder":
        return node.name, Box(["input"], ["input"], "input", "", shape)
    stack = [(key, path) for key, (path, _) in node.meta.get("nn_module_stack", {}).items()
             if type(module.get_submodule(path)) not in CONTAINERS]
    for level, (key, path) in enumerate(stack, 1):
        sub = module.get_submodule(path)
        if level == depth or is_layer(sub):
            kind = "layer" if is_layer(sub) else "block"
            detail = hyperparameters(sub) if kind == "layer" else ""
            return key, Box([path], [type(sub).__name__], kind, path.rpartition(".")[0], shape, detail)
    name = _operation_name(node)
    return node.name, Box([name], [name], "op", stack[-1][1] if stack else "", shape)


def fx_graph(traced: torch.fx.GraphModule, module: nn.Module, depth: int) -> Graph:
    """Boxes for every module call at `depth`, operations between them, and the tensors flowing between.

    Parameters (get_attr), non-tensor values (sizes) and the output node are not drawn.
    """
    keys: dict[torch.fx.Node, str] = {}
    boxes: dict[str, Box] = {}
    for node in traced.graph.nodes:
        drawn = node.op == "placeholder" or (node.op not in ("get_attr", "output")
                                             and _tensor_shape(node.meta.get("tensor_meta")) is not None)
        if not drawn:
            continue
        key, box = _unit(node, module, depth)
        keys[node] = key
        if key in boxes:
            boxes[key].shape = box.shape  # a box's output is its last node's
        else:
            boxes[key] = box
    order = {key: i for i, key in enumerate(boxes)}
    edges = {(order[keys[source]], order[keys[node]])
             for node in keys for source in node.all_input_nodes
             if source in keys and keys[source] != keys[node]}
    return Graph(list(boxes.values()), edges)


def _neighbours(graph: Graph) -> tuple[list[set[int]], list[set[int]]]:
    predecessors: list[set[int]] = [set() for _ in graph.boxes]
    successors: list[set[int]] = [set() for _ in graph.boxes]
    for source, target in graph.edges:
        successors[source].add(target)
        predecessors[target].add(source)
    return predecessors, successors


def _mergeable(a: Box, b: Box) -> bool:
    """Same parent and output shape; blocks only with blocks of their own type (a stage of repeats)."""
    if "input" in (a.kind, b.kind) or (a.parent, a.shape) != (b.parent, b.shape):
        return False
    if "block" in (a.kind, b.kind):
        return a.kind == b.kind and a.types[-1] == b.types[0]
    return True


def collapse_runs(graph: Graph) -> Graph:
    """Merge chains of boxes that `_mergeable` allows, where each link is the only edge out and in."""
    predecessors, successors = _neighbours(graph)
    groups: list[list[int]] = []
    for i, box in enumerate(graph.boxes):
        if groups:
            last = groups[-1][-1]
            if successors[last] == {i} and predecessors[i] == {last} and _mergeable(graph.boxes[last], box):
                groups[-1].append(i)
                continue
        groups.append([i])
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    boxes = []
    for members in groups:
        parts = [graph.boxes[i] for i in members]
        first = parts[0]
        boxes.append(Box([n for p in parts for n in p.names], [t for p in parts for t in p.types], first.kind,
                         first.parent, parts[-1].shape, first.detail if len(parts) == 1 else ""))
    edges = {(group_of[s], group_of[t]) for s, t in graph.edges if group_of[s] != group_of[t]}
    return Graph(boxes, edges, graph.direction)


def module_tree(module: nn.Module, calls: Mapping[str, Calls], depth: int) -> Graph:
    """The module hierarchy to `depth` levels, for models torch.fx cannot trace; shapes from the hooks.

    Consecutive siblings of one type and output shape share a box ("16 × MBConvBlock").
    """
    def shape(name: str) -> str:
        record = calls.get(name)
        return format_shape(record.shapes[0] if record and record.shapes else None)

    graph = Graph([Box([""], [type(module).__name__], "block", "", shape(""))], direction="LR")

    def add_children(parent: str, index: int, level: int) -> None:
        previous: Box | None = None
        for child_name, child in module.get_submodule(parent).named_children():
            path = f"{parent}.{child_name}" if parent else child_name
            kind = "layer" if is_layer(child) else "block"
            box = Box([path], [type(child).__name__], kind, parent, shape(path),
                      hyperparameters(child) if kind == "layer" else "")
            if previous is not None and (previous.types[-1], previous.shape) == (box.types[0], box.shape):
                previous.names.append(path)
                previous.types.append(box.types[0])
                previous.detail = ""
                continue
            graph.boxes.append(box)
            graph.edges.add((index, len(graph.boxes) - 1))
            previous = box
            if level < depth and kind == "block":
                add_children(path, len(graph.boxes) - 1, level + 1)
                previous = None  # a box with children drawn is not merged with the next

    add_children("", 0, 1)
    return graph


def network_graph(module: nn.Module, example: torch.Tensor, calls: Mapping[str, Calls],
                  depth: int) -> tuple[Graph, str | None]:
    """The collapsed torch.fx data-flow graph, or else the module tree and why fx could not trace."""
    try:
        traced = trace(module, example)
    except Exception as error:  # torch.fx raises many types for code it cannot trace
        lines = str(error).strip().splitlines()
        return module_tree(module, calls, depth), f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return collapse_runs(fx_graph(traced, module, depth)), None


def type_summary(types: list[str]) -> str:
    """["Bottleneck"] * 3 -> "3 × Bottleneck"; ["Conv2d", "ReLU"] * 2 -> "2 × (Conv2d · ReLU)"."""
    count = len(types)
    for period in range(1, count // 2 + 1):
        if count % period == 0 and types == types[:period] * (count // period):
            unit = " · ".join(types[:period])
            return f"{count // period} × {unit if period == 1 else f'({unit})'}"
    return " · ".join(types)


def box_title(box: Box, siblings: int, root_name: str) -> str:
    """What a box shows first: a module name, a parent covering a whole run, or a range of names."""
    names = [name or root_name for name in box.names]
    if len(names) == 1:
        return names[0]
    if box.parent and len(names) == siblings:
        return box.parent
    last = [name.rpartition(".")[2] for name in names]
    if box.parent and all(part.isdigit() for part in last):
        return f"{box.parent}.{last[0]}–{last[-1]}"
    if len(names) <= 3:
        return " · ".join([names[0], *last[1:]])
    return f"{names[0]} – {last[-1]}"


def wrap_parts(text: str, width: int = 30) -> list[str]:
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


def box_label(box: Box, siblings: int, root_name: str) -> str:
    title = box_title(box, siblings, root_name)
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
    predecessors, _ = _neighbours(graph)
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
    siblings: dict[str, int] = {}
    for box in graph.boxes:
        siblings[box.parent] = siblings.get(box.parent, 0) + len(box.names)
    lines = [
        "digraph architecture {",
        f'  graph [rankdir={graph.direction}, dpi=96, nodesep=0.2, ranksep=0.25, pad=0.05, fontname="{FONT}"];',
        f'  node [shape=box, style="rounded,filled", fontname="{FONT}", fontsize=10, color="#4b5563", '
        'penwidth=0.8, margin="0.1,0.04", height=0.3];',
        '  edge [color="#4b5563", penwidth=0.8, arrowsize=0.6];',
    ]
    for i, box in enumerate(graph.boxes):
        label = box_label(box, siblings[box.parent], root_name)
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
