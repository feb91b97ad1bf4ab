"""Architecture: a layer table (shapes, parameters, MACs) and a graph of the network, from one input."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from auditor.context import AuditContext
from auditor.graph import Graph, network_graph
from auditor.graph_draw import graph_svg
from auditor.layer_table import LayerRow, format_shape, layer_rows, model_bytes, record_calls
from auditor.section import Figure, Section, Table
from auditor.tensorboard import write_graph

COLUMNS = ["module", "type", "hyper-parameters", "output shape", "parameters", "trainable", "share", "MACs"]


TITLE = "Architecture"


def example_input(ctx: AuditContext) -> torch.Tensor:
    """One input of the model's size: the first audited image, so data-dependent code takes a real path."""
    if len(ctx.images):
        return ctx.images.tensors[:1].to(ctx.device)
    crop = ctx.model.preprocess.crop
    return torch.zeros(1, 3, crop, crop, device=ctx.device)


def table_row(row: LayerRow, total_parameters: int) -> list[Any]:
    shape = format_shape(row.output_shape)
    if row.calls > 1:
        shape += f" ({row.calls} calls)"
    share = f"{row.parameters / total_parameters:.2%}" if row.parameters else ""
    return [row.name or "(model)", row.type, row.hyperparameters, shape, row.parameters, row.trainable, share, row.macs]


def layer_table(rows: list[LayerRow], model_name: str, input_text: str) -> Table:
    total = sum(r.parameters for r in rows)
    footer = ["total", "", "", "", total, sum(r.trainable for r in rows), "100.00%", sum(r.macs for r in rows)]
    caption = (f"Layers of {model_name} with their key hyper-parameters, output shape, parameters and "
               f"multiply-accumulate operations (MACs) for one {input_text} input, measured by hooks during one "
               f"forward pass; totals in the last row. MACs follow torchinfo's convention (convolution and linear "
               f"weights and biases once per output position, batch norm once per image, layers without "
               f"parameters zero), plus multi-head attention's projections and attention products, which "
               f"torchinfo misses; a module called several times counts once per call.")
    return Table("architecture-layers", caption, COLUMNS, [table_row(r, total) for r in rows], footer)


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


def architecture_section(ctx: AuditContext, graph_depth: int, tensorboard: str | None) -> Section:
    """The layer table and the graph of `ctx`'s model, from one hooked forward pass and one fx trace."""
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
        "layers": [r.as_dict(totals["total_parameters"]) for r in rows],
    }
    blocks = [graph_figure(graph, model_name, input_text, untraceable is None, graph_depth),
              layer_table(rows, model_name, input_text)]
    return Section("architecture", TITLE, text=summary_text(model_name, totals, input_text),
                   blocks=blocks, metrics=metrics, notes=notes)
