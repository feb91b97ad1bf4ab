"""Architecture: a layer table (shapes, parameters, MACs) and a graph of the network, from one input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from auditor.context import AuditContext
from auditor.document import Figure, Heading, Section, Table
from auditor.nn.record_calls import Calls, record_calls
from auditor.techniques.architecture.draw import box_title, graph_svg, type_summary
from auditor.techniques.architecture.graph import Graph, GraphBox, network_graph
from auditor.techniques.architecture.table import (
    LayerRow,
    format_shape,
    hyperparameters,
    is_layer,
    layer_rows,
    model_bytes,
    unit_at_depth,
)
from auditor.techniques.architecture.tensorboard import write_graph

COLUMNS = ["module", "type", "hyper-parameters", "output shape", "parameters", "trainable", "share", "MACs"]


def example_input(ctx: AuditContext) -> torch.Tensor:
    """One input of the model's size: the first audited image, so data-dependent code takes a real path."""
    if len(ctx.images):
        return ctx.inputs([0])
    preprocess = ctx.model.preprocess
    return torch.zeros(1, preprocess.channels, *preprocess.crop_size, device=ctx.device)


def table_row(row: LayerRow, total_parameters: int) -> list[Any]:
    shape = format_shape(row.output_shape)
    if row.calls > 1:
        shape += f" ({row.calls} calls)"
    share = f"{row.parameters / total_parameters:.2%}" if row.parameters else ""
    return [row.name or "(model)", row.type, row.hyperparameters, shape, row.parameters, row.trainable, share, row.macs]


def totals_footer(rows: list[LayerRow]) -> list[Any]:
    return ["total", "", "", "", sum(r.parameters for r in rows), sum(r.trainable for r in rows), "100.00%",
            sum(r.macs for r in rows)]


def layer_table(rows: list[LayerRow], model_name: str, input_text: str, folded: bool = False) -> Table:
    """Every layer and every other module owning parameters; `folded` when the structure table stands first."""
    total = sum(r.parameters for r in rows)
    caption = (f"Layers of {model_name} with their key hyper-parameters, output shape, parameters and "
               f"multiply-accumulate operations (MACs) for one {input_text} input, measured by hooks during one "
               f"forward pass; totals in the last row. MACs follow torchinfo's convention (convolution and linear "
               f"weights and biases once per output position, batch norm once per image, layers without "
               f"parameters zero), plus multi-head attention's projections and attention products, which "
               f"torchinfo misses; a module called several times counts once per call.")
    return Table("architecture-layers", caption, COLUMNS, [table_row(r, total) for r in rows], totals_footer(rows),
                 folded=folded, unfold="--table-depth 0")


@dataclass
class Unit:
    """A row of the structure table: a module at the table's depth, or a run of repeated blocks, with totals."""

    box: GraphBox  # names, types, parent, output shape and a single layer's hyper-parameters, as a graph box
    whole: bool  # False for a module opened at this depth: the row holds only its own parameters
    calls: int
    parameters: int = 0
    trainable: int = 0
    macs: int = 0

    def absorb(self, other: Unit) -> None:
        self.box.names += other.box.names
        self.box.types += other.box.types
        self.parameters += other.parameters
        self.trainable += other.trainable
        self.macs += other.macs


def structure_units(module: nn.Module, rows: list[LayerRow], calls: Mapping[str, Calls], depth: int) -> list[Unit]:
    """`rows` summed into the modules shown at `depth` levels (containers and stage wrappers looked through,
    as in the graph), consecutive sibling blocks of one type and output shape collapsed into one unit.

    The units partition the rows, so their totals equal the full table's.
    """
    found: dict[str, Unit] = {}
    for row in rows:
        name, whole = unit_at_depth(module, row.name, depth)
        if name not in found:
            sub = module.get_submodule(name)
            layer = is_layer(sub)
            record = calls.get(name, Calls())
            shape = format_shape(record.shapes[0] if record.shapes else None)
            detail = hyperparameters(sub) if layer else "" if whole else "own parameters"
            box = GraphBox([name], [type(sub).__name__], "layer" if layer else "block", name.rpartition(".")[0], shape,
                      detail)
            found[name] = Unit(box, whole, len(record.shapes))
        unit = found[name]
        unit.parameters += row.parameters
        unit.trainable += row.trainable
        unit.macs += row.macs
    units: list[Unit] = []
    for unit in found.values():
        if units and _repeats(units[-1], unit):
            units[-1].absorb(unit)
        else:
            units.append(unit)
    return units


def _repeats(last: Unit, unit: Unit) -> bool:
    a, b = last.box, unit.box
    return (last.whole and unit.whole and a.kind == b.kind == "block" and last.calls == unit.calls
            and (a.parent, a.types[-1], a.shape) == (b.parent, b.types[0], b.shape))


def unit_row(unit: Unit, module: nn.Module, total_parameters: int) -> list[Any]:
    box = unit.box
    whole_parent = len(box.names) > 1 and len(box.names) == len(list(module.get_submodule(box.parent).children()))
    shape = box.shape + (f" ({unit.calls} calls)" if unit.calls > 1 else "")
    share = f"{unit.parameters / total_parameters:.2%}" if unit.parameters else ""
    return [box_title(box, whole_parent, "(model)"), type_summary(box.types), box.detail, shape, unit.parameters,
            unit.trainable, share, unit.macs]


def structure_table(units: list[Unit], module: nn.Module, rows: list[LayerRow], model_name: str, input_text: str,
                    depth: int) -> Table:
    """The short table that opens the section: the network's structure with each part's totals."""
    total = sum(r.parameters for r in rows)
    level = ("its top level, as in the graph (containers such as nn.Sequential looked through)" if depth == 1
             else f"{depth} module levels (containers such as nn.Sequential not counted)")
    caption = (f"Structure of {model_name} at {level}: each row sums the layers inside a module, and “N ×” marks "
               f"N consecutive blocks of one type and output shape in one row; output shape, parameters and "
               f"multiply-accumulate operations (MACs) for one {input_text} input, counted as in the per-module "
               f"table that follows; totals in the last row. --table-depth opens the blocks.")
    return Table("architecture-structure", caption, COLUMNS, [unit_row(u, module, total) for u in units],
                 totals_footer(rows))


def graph_figure(graph: Graph, model_name: str, input_text: str, traced: bool, depth: int) -> Figure:
    key = "architecture-graph"
    if traced:
        caption = (f"Data-flow graph of {model_name} for one {input_text} input, traced with torch.fx: each box is "
                   f"a module call or tensor operation with its output shape (channels×height×width), and "
                   f"consecutive calls in one module with the same output shape share a box, “N ×” marking "
                   f"N repeated blocks. Blue: layers; green: blocks of layers (--graph-depth opens them); yellow: "
                   f"tensor operations such as residual additions.")
    else:
        caption = (f"Module hierarchy of {model_name} to depth {depth}, with each module's output shape for one "
                   f"{input_text} input; consecutive sibling modules of one type and output shape share a box.")
    svg = graph_svg(graph, model_name, id_prefix=f"{key}-")
    alt = f"{'Data-flow graph' if traced else 'Module tree'} of {model_name} with {len(graph.boxes)} boxes."
    return Figure(key, caption, svg.encode("utf-8"), "image/svg+xml", alt)


def summary_text(model_name: str, totals: Mapping[str, Any], input_text: str) -> str:
    """The numbers in one sentence; what the figure and table show is in their captions, for a thesis."""
    return (f"{model_name} has {totals['total_parameters']:,} parameters "
            f"({totals['trainable_parameters']:,} trainable) taking {totals['model_size_mb']:.1f} MB "
            f"with its buffers (1 MB = 10⁶ bytes), and one {input_text} input costs "
            f"{totals['total_macs'] / 1e9:.3f} billion multiply-accumulate operations (MACs).")


def layer_tables(module: nn.Module, rows: list[LayerRow], calls: Mapping[str, Calls], model_name: str,
                 input_text: str, depth: int) -> list[Table]:
    """The structure table at `depth` and the full table folded, or the full table alone: for `depth` 0, or
    when the structure table would list the same modules."""
    if depth > 0:
        units = structure_units(module, rows, calls, depth)
        if [u.box.names for u in units] != [[r.name] for r in rows]:
            return [structure_table(units, module, rows, model_name, input_text, depth),
                    layer_table(rows, model_name, input_text, folded=True)]
    return [layer_table(rows, model_name, input_text)]


def architecture_section(heading: Heading, ctx: AuditContext, settings: dict[str, Any],
                         tensorboard: str | None) -> Section:
    """The graph and the layer tables of `ctx`'s model, from one hooked forward pass and one fx trace."""
    graph_depth, table_depth = settings["graph_depth"], settings["table_depth"]
    module: nn.Module = ctx.module
    model_name = ctx.model.name
    example = example_input(ctx)
    input_text = format_shape(tuple(example.shape))
    calls = record_calls(module, example)
    # Trainable as the user set it: the audit itself runs with every parameter frozen.
    rows = layer_rows(module, calls, ctx.requires_grad)
    graph, untraceable = network_graph(module, example, calls, graph_depth)
    totals = {
        "total_parameters": sum(r.parameters for r in rows),
        "trainable_parameters": sum(r.trainable for r in rows),
        "total_macs": sum(r.macs for r in rows),
        "model_size_mb": model_bytes(module) / 1e6,
    }
    notes = []
    if untraceable is not None:
        notes.append(f"torch.fx could not trace {model_name} ({untraceable}), so the figure shows the module "
                     f"tree instead of the data flow.")
    if tensorboard:
        failed = write_graph(module, example, tensorboard)
        notes.append(failed or f"The graph was also written for TensorBoard to {tensorboard}.")
    metrics = {
        **totals,
        "input_size": list(example.shape[1:]),
        "graph": {"kind": "module tree" if untraceable else "torch.fx", "depth": graph_depth,
                  "boxes": len(graph.boxes)},
        "table_depth": table_depth,
        "layers": [r.as_dict(totals["total_parameters"]) for r in rows],
    }
    blocks = [graph_figure(graph, model_name, input_text, untraceable is None, graph_depth),
              *layer_tables(module, rows, calls, model_name, input_text, table_depth)]
    return Section(heading.name, heading.title, text=summary_text(model_name, totals, input_text),
                   blocks=blocks, metrics=metrics, notes=notes)
