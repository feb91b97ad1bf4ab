"""Peak memory and time of `auditor run` on 200 and 2,000 generated images (not a test).

    .venv/bin/python bench/bench_scale.py [--counts 200,2000] [--techniques predictions,cam] [--keep DIR]

Writes seeded 320 x 240 JPEGs (colour gradients with noise, in four label folders) to a temporary
folder, runs the CLI on them in a child process per count, and prints the child's peak RSS (from
os.wait4's resource usage, so each run is measured alone), wall time and the report's file sizes.
Streaming shows as a peak that stays flat while the folder grows tenfold. The environment passes
through: with MALLOC_MMAP_THRESHOLD_=131072, glibc returns freed batches to the system at once, so
the peak shows live data only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

FOLDERS = ("tabby", "espresso", "goldfish", "golden retriever")  # ImageNet classes, so accuracy is computed


def write_images(folder: Path, count: int, seed: int = 0) -> None:
    """`count` JPEGs: a random two-colour gradient plus noise, spread over the label folders."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, 320, dtype=np.float32)[None, :, None]
    for i in range(count):
        start, end = rng.uniform(0, 255, (2, 1, 1, 3)).astype(np.float32)
        noise = rng.normal(0, 20, (240, 320, 3)).astype(np.float32)
        pixels = np.clip(start + (end - start) * ramp + noise, 0, 255).astype(np.uint8)
        path = folder / FOLDERS[i % len(FOLDERS)] / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=85)


def run(images: Path, out: Path, techniques: str, extra: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of one `auditor run` in a child process."""
    command = [sys.executable, "-m", "auditor", "run", str(images), "--out", str(out), "--device", "cpu",
               "--techniques", techniques, *extra]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"auditor run failed on {images} (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 1024, seconds  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="200,2000")
    parser.add_argument("--techniques", default="predictions,cam")
    parser.add_argument("--keep", type=Path, default=None, help="write images and reports here, and keep them")
    parser.add_argument("extra", nargs="*", help="more `auditor run` arguments, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        print(f"{'images':>7} {'peak RSS MB':>12} {'seconds':>8} {'html MB':>8} {'pdf MB':>7} {'json MB':>8}")
        for count in (int(c) for c in args.counts.split(",")):
            images, out = root / f"images-{count}", root / f"report-{count}"
            write_images(images, count)
            peak, seconds = run(images, out, args.techniques, args.extra)
            sizes = [(out / name).stat().st_size / 1e6 if (out / name).exists() else float("nan")
                     for name in ("report.html", "report.pdf", "report.json")]
            print(f"{count:>7} {peak:>12.0f} {seconds:>8.1f} {sizes[0]:>8.2f} {sizes[1]:>7.2f} {sizes[2]:>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
