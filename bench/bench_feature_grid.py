"""Feature-map grid rendering: one numpy/Pillow image against one matplotlib subplot per channel (not a test).

    .venv/bin/python bench/bench_feature_grid.py [--channels 64] [--repeat 5]

Both draw the same 64 channels of 56×56 activations as an 8×8 grid and encode it as PNG; the
matplotlib way is the classic tutorial's (plt.subplots, imshow per channel, savefig), here on the
object-oriented API with the Agg canvas. Prints the median times and their ratio.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from bench_reconstructions import (
    median_seconds,  # bench/ is on the path when a script there runs
)
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from auditor.drawing import tile_grid, to_png, upscale
from auditor.sections.feature_maps import channel_picture


def ours(maps: np.ndarray) -> bytes:
    tiles = [upscale(channel_picture(m), 64) for m in maps]
    return to_png(tile_grid(tiles, 8, [str(i) for i in range(len(maps))]))


def subplots(maps: np.ndarray) -> bytes:
    figure = Figure(figsize=(8, 8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(8, -(-len(maps) // 8))
    for index, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if index < len(maps):
            axis.imshow(maps[index], cmap="gray")
            axis.set_title(str(index), fontsize=6)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    maps = np.maximum(np.random.default_rng(0).normal(size=(args.channels, 56, 56)), 0).astype(np.float32)
    fast, slow = (median_seconds(lambda: ours(maps), args.repeat), median_seconds(lambda: subplots(maps), args.repeat))
    print(f"{args.channels} channels of 56x56 as one PNG grid (median of {args.repeat})")
    print(f"  numpy + Pillow tile grid      {fast * 1000:8.1f} ms")
    print(f"  matplotlib subplot per channel {slow * 1000:8.1f} ms")
    print(f"  ratio                          {slow / fast:8.1f}x")


if __name__ == "__main__":
    main()
