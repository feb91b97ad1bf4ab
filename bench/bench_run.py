"""Time each stage of the default audit (not a test): load, decode, forward, HTML, JSON, PDF.

    .venv/bin/python bench/bench_run.py [--repeat N] [--images DIR]

Prints the median of N runs per stage, so a change's effect shows as a ratio within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from auditor import RunOptions, load_images, load_model, run_audit
from auditor.report.html import render_html
from auditor.report.manifest import render_json
from auditor.report.pdf import render_pdf


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", default=None)
    args = parser.parse_args()
    rows = []
    seconds, model = timed(load_model, args.repeat)
    rows.append(("load EfficientNet-Lite0", seconds))
    seconds, images = timed(lambda: load_images(args.images, model.preprocess, model.class_names), args.repeat)
    rows.append((f"decode + preprocess {len(images)} images", seconds))
    for technique in ("predictions", "architecture"):
        seconds, _ = timed(lambda: run_audit(model, images, RunOptions(techniques=(technique,))), args.repeat)
        rows.append((f"run_audit: {technique}", seconds))
    report = run_audit(model, images, RunOptions())
    seconds, html = timed(lambda: render_html(report), args.repeat)
    rows.append((f"render HTML ({len(html) / 1e6:.1f} MB)", seconds))
    seconds, _ = timed(lambda: render_json(report), args.repeat)
    rows.append(("render JSON", seconds))
    seconds, pdf = timed(lambda: render_pdf(html), args.repeat)
    rows.append((f"render PDF ({len(pdf) / 1e6:.1f} MB)", seconds))
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
