"""Time the architecture section on ResNet-50 (random weights) and the default model, phase by phase.

Run: .venv/bin/python bench/bench_architecture.py [--repeat N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

from auditor.config import RunOptions
from auditor.context import AuditContext
from auditor.declarations import Architecture
from auditor.inputs.images import ImageSet
from auditor.inputs.models import LoadedModel, load_model
from auditor.inputs.preprocess import Preprocess
from auditor.nn.record_calls import record_calls
from auditor.nn.restore import audit_mode, requires_grad_flags
from auditor.techniques.architecture.draw import graph_svg
from auditor.techniques.architecture.graph import network_graph
from auditor.techniques.architecture.table import layer_rows


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def phases(model: LoadedModel) -> dict[str, float]:
    """Seconds for the hooked pass, the table rows, tracing and collapsing, and drawing the SVG."""
    module = model.module
    crop = model.preprocess.crop
    example = torch.zeros(1, 3, crop, crop)
    hooks, calls = timed(lambda: record_calls(module, example))
    rows, _ = timed(lambda: layer_rows(module, calls))
    trace, (graph, _) = timed(lambda: network_graph(module, example, calls, 1))
    draw, _ = timed(lambda: graph_svg(graph, model.name, "bench-"))
    return {"hooked pass": hooks, "rows": rows, "fx graph": trace, "svg": draw}


def section_seconds(model: LoadedModel, repeat: int) -> tuple[float, list[float]]:
    """The whole technique, as run_audit runs it: once cold, then `repeat` times warm."""
    images = ImageSet()
    options = RunOptions(device="cpu")
    ctx = AuditContext(model, images, options, torch.device("cpu"), requires_grad_flags(model.module))
    times = [timed(lambda: Architecture().run(ctx, options))[0] for _ in range(repeat + 1)]
    return times[0], times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    models = [
        LoadedModel(torchvision.models.resnet50(weights=None), Preprocess(), [], "ResNet-50", "resnet50",
                    "torchvision", "random initialisation"),
        load_model(),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x224x224, graph depth 1\n")
    header = f"{'model':<20}{'cold s':>8}{'warm s':>8}{'hooked pass':>13}{'rows':>7}{'fx graph':>10}{'svg':>7}"
    print(header)
    print("-" * len(header))
    for model in models:
        with audit_mode(model.module, torch.device("cpu")):
            cold, warm = section_seconds(model, args.repeat)
            parts = phases(model)
        print(f"{model.name:<20}{cold:>8.2f}{min(warm):>8.2f}{parts['hooked pass']:>13.3f}{parts['rows']:>7.3f}"
              f"{parts['fx graph']:>10.3f}{parts['svg']:>7.3f}")


if __name__ == "__main__":
    main()
