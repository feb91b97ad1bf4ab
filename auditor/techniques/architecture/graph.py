"""The network as a small graph of boxes: torch.fx data flow, or the module tree as a fallback.

At depth 1 each box is a top-level module call (containers such as nn.Sequential are looked through,
so ResNet's layer1 shows its Bottlenecks, and so are stage wrappers such as ViT's Encoder, which keeps
its 12 EncoderBlocks in a container); deeper levels open blocks up. Consecutive boxes in one
parent with the same output shape, joined by a single edge, collapse into one: "3 × Bottleneck" for
repeated blocks, "Conv2d · BatchNorm2d · ReLU" for a chain of layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from auditor.nn.record_calls import Calls
from auditor.techniques.architecture.table import (
    format_shape,
    hyperparameters,
    is_layer,
    transparent,
)


@dataclass
class GraphBox:
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

    boxes: list[GraphBox]
    edges: set[tuple[int, int]] = field(default_factory=set)
    direction: str = "TB"


def trace(module: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Symbolically trace `module` and record each node's output shape on `example`.

    Raises whatever torch.fx raises for code it cannot trace (data-dependent control flow, say). The
    tracer stores the forward's tensor constants on the module it traces (`_tensor_constantN`, as
    maxvit_t's); the traced copy keeps its own, and the user's module is given back without them.
    """
    attributes = set(vars(module))
    try:
        traced = torch.fx.symbolic_trace(module)
    finally:
        for added in set(vars(module)) - attributes:
            delattr(module, added)
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


def _unit(node: torch.fx.Node, module: nn.Module, depth: int) -> tuple[str, GraphBox]:
    """The box a drawn fx node belongs to at `depth`, and that box's key (one per module call)."""
    shape = format_shape(_tensor_shape(node.meta.get("tensor_meta")))
    if node.op == "placeholder":
        return node.name, GraphBox(["input"], ["input"], "input", "", shape)
    entries = node.meta.get("nn_module_stack", {}).items()
    stack = [(key, path, module.get_submodule(path)) for key, (path, _) in entries
             if not transparent(module.get_submodule(path))]
    for level, (key, path, sub) in enumerate(stack, 1):
        layer = is_layer(sub)
        if level == depth or layer:
            kind, detail = ("layer", hyperparameters(sub)) if layer else ("block", "")
            return key, GraphBox([path], [type(sub).__name__], kind, path.rpartition(".")[0], shape, detail)
    name = _operation_name(node)
    return node.name, GraphBox([name], [name], "op", stack[-1][1] if stack else "", shape)


def fx_graph(traced: torch.fx.GraphModule, module: nn.Module, depth: int) -> Graph:
    """Boxes for every module call at `depth`, operations between them, and the tensors flowing between.

    Parameters (get_attr), non-tensor values (sizes) and the output node are not drawn.
    """
    keys: dict[torch.fx.Node, str] = {}
    boxes: dict[str, GraphBox] = {}
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


def neighbours(graph: Graph) -> tuple[list[set[int]], list[set[int]]]:
    """Each box's predecessors and successors."""
    predecessors: list[set[int]] = [set() for _ in graph.boxes]
    successors: list[set[int]] = [set() for _ in graph.boxes]
    for source, target in graph.edges:
        successors[source].add(target)
        predecessors[target].add(source)
    return predecessors, successors


def _mergeable(a: GraphBox, b: GraphBox) -> bool:
    """Same parent and output shape; blocks only with blocks of their own type (a stage of repeats)."""
    if "input" in (a.kind, b.kind) or (a.parent, a.shape) != (b.parent, b.shape):
        return False
    if "block" in (a.kind, b.kind):
        return a.kind == b.kind and a.types == b.types
    return True


def collapse_runs(graph: Graph) -> Graph:
    """Merge chains of boxes that `_mergeable` allows, where each link is the only edge out and in."""
    predecessors, successors = neighbours(graph)
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
        boxes.append(GraphBox([n for p in parts for n in p.names], [t for p in parts for t in p.types], first.kind,
                         first.parent, parts[-1].shape, first.detail if len(parts) == 1 else ""))
    edges = {(group_of[s], group_of[t]) for s, t in graph.edges if group_of[s] != group_of[t]}
    return Graph(boxes, edges, graph.direction)


def module_tree(module: nn.Module, calls: Mapping[str, Calls], depth: int) -> Graph:
    """The module hierarchy to `depth` levels, for models torch.fx cannot trace; shapes from the hooks.

    Containers and stage wrappers are looked through, as in the data-flow graph; consecutive siblings
    of one type and output shape share a box ("_blocks.0–15 / 16 × MBConvBlock").
    """
    def shape(name: str) -> str:
        record = calls.get(name)
        return format_shape(record.shapes[0] if record and record.shapes else None)

    graph = Graph([GraphBox([""], [type(module).__name__], "block", "", shape(""))], direction="LR")

    def add_children(parent: str, index: int, level: int) -> None:
        previous: GraphBox | None = None
        for child_name, child in module.get_submodule(parent).named_children():
            path = f"{parent}.{child_name}" if parent else child_name
            if transparent(child):
                add_children(path, index, level)
                previous = None
                continue
            kind = "layer" if is_layer(child) else "block"
            box = GraphBox([path], [type(child).__name__], kind, parent, shape(path),
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
        reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
        return module_tree(module, calls, depth), reason
    return collapse_runs(fx_graph(traced, module, depth)), None
