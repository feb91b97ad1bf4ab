"""The benches' one timer: the seconds of repeated runs of a function (imported as `timing`, since a bench
runs as `python bench/NAME.py`, which puts bench/ on the path)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def timings(function: Callable[[], Any], repeat: int, clock: Callable[[], float], warm_up: bool = True) -> list[float]:
    """Seconds of each of `repeat` runs by `clock` (perf_counter: wall; process_time: CPU), after one warm-up run
    if asked (the first run pays for oneDNN's kernel choices and allocations)."""
    if warm_up:
        function()
    times = []
    for _ in range(repeat):
        start = clock()
        function()
        times.append(clock() - start)
    return times
