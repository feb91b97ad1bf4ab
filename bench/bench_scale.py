"""Peak memory, time and throughput of `auditor run` on 200 and 2,000 generated images (not a test).

    .venv/bin/python bench/bench_scale.py [--counts 200,2000] [--techniques predictions,cam] [--keep DIR]
                                          [--workers 0,1] [--ranks 1,2]

Each count runs once per --workers value and per number of ranks: 1 is one process, N > 1 is
`torchrun --standalone --nproc-per-node N -m auditor run ...` (gloo on the CPU). images/s is the
images over the whole run's wall time (loading, the scan and every technique included); "same" says
whether report.json's predictions are identical to the first run of that count; CPU s, the CPU
time of all the run's processes (CPU s / seconds: the cores it kept busy).

Writes seeded 320 x 240 JPEGs (colour gradients with noise, in four label folders) to a temporary
folder, runs the CLI on them in a child process per count, and prints the child's peak RSS (from
os.wait4's resource usage, so each run is measured alone), wall time and the report's file sizes.
Streaming shows as a peak that stays flat while the folder grows tenfold. The environment passes
through: with MALLOC_MMAP_THRESHOLD_=131072, glibc returns freed batches to the system at once, so
the peak shows live data only.
"""

from __future__ import annotations

import argparse
import json
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


def run(images: Path, out: Path, techniques: str, extra: list[str], workers: int | None = None,
        ranks: int = 1) -> tuple[float, float, float]:
    """Peak RSS (MB: the largest process's), wall seconds and CPU seconds (all processes: wait4 counts the
    children the child waited for) of one `auditor run` in a child process (under torchrun with `ranks` > 1)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                "-m", "auditor"] if ranks > 1 else [sys.executable, "-m", "auditor"]
    command = [*launcher, "run", str(images), "--out", str(out), "--device", "cpu", "--techniques", techniques,
               *([] if workers is None else ["--workers", str(workers)]), *extra]
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"auditor run failed on {images} (exit {os.waitstatus_to_exitcode(status)})")
    return usage.ru_maxrss / 1024, seconds, usage.ru_utime + usage.ru_stime  # Linux reports kilobytes


def predictions(out: Path) -> object:
    """report.json's per-image predictions (None without them): equal across workers and ranks."""
    try:
        report = json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return next((s.get("metrics", {}).get("images") for s in report["sections"] if s["technique"] == "predictions"),
                None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="200,2000")
    parser.add_argument("--techniques", default="predictions,cam")
    parser.add_argument("--keep", type=Path, default=None, help="write images and reports here, and keep them")
    parser.add_argument("--workers", default="", help="comma-separated --workers values (default: auditor's own)")
    parser.add_argument("--ranks", default="1", help="comma-separated process counts; N > 1 runs under torchrun")
    parser.add_argument("extra", nargs="*", help="more `auditor run` arguments, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        workers = [int(w) for w in args.workers.split(",")] if args.workers else [None]
        ranks = [int(r) for r in args.ranks.split(",")]
        print(f"{'images':>7} {'workers':>7} {'ranks':>5} {'peak RSS MB':>12} {'seconds':>8} {'images/s':>8} "
              f"{'x first':>7} {'CPU s':>6} {'same':>5} {'html MB':>8} {'pdf MB':>7} {'json MB':>8}")
        for count in (int(c) for c in args.counts.split(",")):
            images = root / f"images-{count}"
            write_images(images, count)
            first: tuple[float, object] | None = None
            for n in ranks:
                for w in workers:
                    out = root / f"report-{count}-w{'auto' if w is None else w}-r{n}"
                    peak, seconds, cpu = run(images, out, args.techniques, args.extra, w, n)
                    sizes = [(out / name).stat().st_size / 1e6 if (out / name).exists() else float("nan")
                             for name in ("report.html", "report.pdf", "report.json")]
                    found = predictions(out)
                    first = first or (seconds, found)
                    print(f"{count:>7} {'auto' if w is None else w:>7} {n:>5} {peak:>12.0f} {seconds:>8.1f} "
                          f"{count / seconds:>8.1f} {first[0] / seconds:>7.2f} {cpu:>6.1f} {found == first[1]!s:>5} "
                          f"{sizes[0]:>8.2f} {sizes[1]:>7.2f} {sizes[2]:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
