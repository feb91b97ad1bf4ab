"""Input layout and folding (BatchNorms, zero paddings): what each buys a forward pass, and a forward and
backward pass.

Run: .venv/bin/python bench/bench_layout.py [--batch 32] [--threads 2] [--repeat 3]

For the default model (EfficientNet-Lite0) and resnet50 (random weights: timing does not depend on
them) at 224 px, median wall seconds per image of:
  forward     inference mode, as the shared forward pass and the trust section's perturbed images run
  backward    forward and input gradient, as CAM, guided backprop and the randomisation test run
each with the usual (contiguous) input, channels-last input (AuditContext.memory_format), BatchNorms and
zero paddings folded into the convolutions (auditor/nn/folding.py), and both; with freed memory reused, as
run_audit sets it (auditor/allocator.py).
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch
import torchvision
from bench_reconstructions import (
    median_seconds,  # bench/ is on the path when a script there runs
)
from torch import nn

from auditor.allocator import reuse_freed_memory
from auditor.inputs.models import load_model
from auditor.nn.folding import folded_batch_norms
from auditor.nn.restore import audit_mode


def forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


def backward(model: nn.Module, x: torch.Tensor) -> None:
    leaf = x.detach().clone().requires_grad_(True)
    torch.autograd.grad(model(leaf).max(dim=1).values.sum(), [leaf])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} at 224 px, "
          f"median wall ms per image of {args.repeat} runs")
    models = {"EfficientNet-Lite0": load_model().module, "resnet50": torchvision.models.resnet50()}
    x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    print(f"{'model':20}{'pass':10}{'usual':>8}{'ch-last':>9}{'folded':>8}{'both':>7}{'speed-up':>10}")
    for name, model in models.items():
        with audit_mode(model):
            for label, run in (("forward", forward), ("backward", backward)):
                row = []
                for fold in (False, True):
                    with folded_batch_norms(model, model, x[:1]) if fold else nullcontext():
                        for layout in (torch.contiguous_format, torch.channels_last):
                            inputs = x.contiguous(memory_format=layout)
                            row.append(median_seconds(lambda run=run, model=model, inputs=inputs: run(model, inputs),
                                                      args.repeat) / args.batch)
                usual, last, folded, both = (1000 * seconds for seconds in row)
                print(f"{name:20}{label:10}{usual:8.1f}{last:9.1f}{folded:8.1f}{both:7.1f}{usual / both:9.2f}x")


if __name__ == "__main__":
    main()
