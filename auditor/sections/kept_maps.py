"""The maps a run keeps for later (maps.safetensors, read by `auditor compare`): plain arrays on a Section.

For each image the CAM section explains, each CAM-family map of its top class at the target layer's
resolution (CamResult.raw, before upsampling), min-max scaled to [0, 1] per map and stored as float16,
keyed "<image sha256>/<method key>". No pixels of the images are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from auditor.context import AuditContext
from auditor.techniques.tensor_ops import minmax


def kept_maps(ctx: AuditContext, raw: dict[str, torch.Tensor], shown: list[int], columns: list[int]) -> dict[str, Any]:
    """"<sha256>/<method>" -> [h, w] float16 array: the top class's map (column `columns[row]`) of each row."""
    kept: dict[str, Any] = {}
    for method, maps in raw.items():
        for row, (index, column) in enumerate(zip(shown, columns)):
            heat = minmax(maps[row, column].detach().float().cpu()[None])[0]
            kept[f"{ctx.images.sha256[index]}/{method}"] = np.ascontiguousarray(heat.numpy().astype(np.float16))
    return kept
